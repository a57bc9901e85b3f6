"""Classification fine-tuning (book ch. 6): the book's split, pooling, parity with transformers, training."""

from __future__ import annotations

import json
import re

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.data.classification import balance, encode, read_labelled, split
from scratchllm.errors import ScratchLLMError
from scratchllm.models import build_model
from scratchllm.models.classifier import SequenceClassifier, set_trainable
from scratchllm.tokenizers import load_tokenizer

from .conftest import shared_file

SPAM = "sms_spam_collection/SMSSpamCollection.tsv"


def test_the_books_sms_spam_split():
    data = read_labelled(shared_file(SPAM), text="1", label="0")
    assert len(data) == 5572 and data.counts() == {"ham": 4825, "spam": 747} and data.names == ["ham", "spam"]
    balanced = balance(data, seed=123)
    assert balanced.counts() == {"ham": 747, "spam": 747}
    train, val, test = split(balanced, 0.7, 0.1, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    # The book's train.csv / validation.csv / test.csv begin and end with these (its seed-123 shuffles):
    # sizes alone would not notice another seed or another order of operations.
    ends = {"train": ("Dude how do you like the buff wind.", "His frens go then he in lor. Not alone wif my mum"),
            "val": ("Mila, age23, blonde, new in UK. I look sex with UK guys.", "U can WIN £100 of Music Gift"),
            "test": ("85233 FREE>Ringtone!Reply REAL", "Your unique user ID is 1172. For removal send STOP")}
    from scratchllm.training.classify import load_splits
    from scratchllm.training.config import ClassifyConfig

    run_splits = load_splits(ClassifyConfig(data=str(shared_file(SPAM)), text_column="1", label_column="0"))
    for parts in ((train, val, test), run_splits):  # as called here, and as a run with the defaults does
        for part, (first, last) in zip(parts, ends.values()):
            assert part.texts[0].startswith(first) and part.texts[-1].startswith(last)
    encoded = encode(train, load_tokenizer("gpt2"), pad_id=50256)
    assert encoded.ids.shape == (1045, 120) and encoded.truncated == 0  # the book's longest training message
    assert (encoded.ids[:, -1] == 50256).sum() > 1000  # right-padded with <|endoftext|>
    test_ids = encode(test, load_tokenizer("gpt2"), 50256, length=120)
    assert test_ids.ids.shape == (300, 120)


@pytest.fixture(scope="module", params=["gpt-tiny", "llama-tiny"])
def tiny_classifier(request):
    torch.manual_seed(0)
    return build_model(request.param).eval()


def test_last_non_pad_pooling_ignores_right_padding_and_finds_the_last_token(tiny_classifier):
    text = torch.randint(1, 500, (1, 9), generator=torch.Generator().manual_seed(1))
    pad = 0

    def padded(n: int) -> torch.Tensor:
        return torch.cat([text, torch.full((1, n), pad)], dim=1)

    clf = {p: SequenceClassifier(tiny_classifier, 2, p, pad_id=pad).eval() for p in ("last", "last-non-pad", "mean")}
    with torch.no_grad():
        for pooling in ("last-non-pad", "mean"):
            torch.testing.assert_close(clf[pooling](padded(3)), clf[pooling](padded(20)), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(clf["last"](padded(3)), clf["last"](padded(20)))  # the book's pooling reads a pad
        hidden = tiny_classifier.hidden(padded(5))
        left = torch.cat([torch.full((1, 4), pad), text], dim=1)
        # Under left padding the last real token is the last position; under right padding it is position 8.
        assert torch.equal(clf["last-non-pad"].pool(hidden, padded(5)), hidden[:, 8])
        hidden_left = tiny_classifier.hidden(left)
        assert torch.equal(clf["last-non-pad"].pool(hidden_left, left), hidden_left[:, -1])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logits_equal_transformers_for_sequence_classification(arch, device):
    import transformers

    from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf
    from scratchllm.models import Transformer

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=300, num_labels=3,
                                      pad_token_id=0, initializer_range=0.2)  # fmt: skip
        hf = transformers.GPT2ForSequenceClassification(cfg).eval()
    else:
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                       num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=64,
                                       vocab_size=300, num_labels=3, pad_token_id=0, initializer_range=0.2,
                                       tie_word_embeddings=True)  # fmt: skip
        hf = transformers.LlamaForSequenceClassification(cfg).eval()
    sd = {k: v for k, v in hf.state_dict().items() if k != "score.weight"}
    config = config_from_hf(hf.config.to_dict())
    backbone = Transformer(config)
    backbone.load_state_dict(state_dict_from_hf(sd, config))
    ours = SequenceClassifier(backbone, 3, "last-non-pad", pad_id=0).eval()
    with torch.no_grad():
        ours.head.weight.copy_(hf.score.weight)
        ours.head.bias.zero_()  # transformers' score layer has no bias
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 300, (4, 20), generator=g)
    for row, n in enumerate((20, 14, 7, 1)):
        ids[row, n:] = 0  # right padding of different lengths
    ours, hf, ids = ours.to(device), hf.to(device), ids.to(device)
    with torch.no_grad():
        expected = hf(ids, attention_mask=(ids != 0).long()).logits
        got = ours(ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_trainable_parts():
    torch.manual_seed(0)
    model = SequenceClassifier(build_model("gpt-tiny", n_layers=3), 2)
    counts = {}
    for which in ("head", "last-block", "last-two-blocks", "all"):
        set_trainable(model, which)
        counts[which] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    block = sum(p.numel() for p in model.backbone.blocks[0].parameters())
    norm = sum(p.numel() for p in model.backbone.final_norm.parameters())
    assert counts["head"] == 64 * 2 + 2
    assert counts["last-block"] == counts["head"] + block + norm  # the book: last block + final norm + head
    assert counts["last-two-blocks"] == counts["last-block"] + block
    unused_lm_head = model.backbone.out_head.weight.numel()  # gpt-tiny's head is untied
    assert counts["all"] == sum(p.numel() for p in model.parameters()) - unused_lm_head
    with pytest.raises(ScratchLLMError, match="trainable 'middle'"):
        set_trainable(model, "middle")


def _finetune_args(tmp_path, *extra: str) -> list[str]:
    return ["finetune", "classify", "--checkpoint", "gpt-tiny", "--data", str(shared_file(SPAM)),
            "--text-column", "1", "--label-column", "0", "--trainable", "all", "--pooling", "last-non-pad",
            "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "10", "--max-length", "64", "--eval-every", "50",
            "--out-dir", str(tmp_path / "run"), "--no-progress", *extra]  # fmt: skip


def test_small_model_learns_spam_and_the_run_folder_classifies(tmp_path, capsys):
    """A randomly initialised gpt-tiny (GPT-2 vocabulary) on the book's split: >= 90% test accuracy."""
    assert main(_finetune_args(tmp_path, "--epochs", "3")) == 0
    out = capsys.readouterr().out
    assert "data 1,045 / 149 / 300 texts" in out and "padded to 64 tokens" in out
    assert re.search(r"padded to 64 tokens, \d+ truncated", out)  # texts longer than --max-length are counted
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    report = final["test"]
    assert report["accuracy"] >= 0.90, report
    assert sum(map(sum, report["confusion"])) == 300 and set(report["classes"]) == {"ham", "spam"}
    assert final["train_loss"] < records[0]["train_loss"]
    assert (run / "loss.png").exists() and (run / "accuracy.png").exists()
    assert main(["classify", "--checkpoint", str(run), "--json", "WINNER!! Claim your free prize now, call 09061",
                 "See you at lunch tomorrow?"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["spam", "ham"]
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-5 for x in lines)
    spam = "WINNER!! Claim your free prize now, call 09061"
    (tmp_path / "texts.txt").write_text(f"{spam}\n\nSee you at lunch tomorrow?\n")
    (tmp_path / "texts.csv").write_text(f'id,message\n1,"{spam}"\n')
    assert main(["classify", "--checkpoint", str(run), "--file", str(tmp_path / "texts.txt")]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["spam", "ham"]
    assert main(["classify", "--checkpoint", str(run), "--file", str(tmp_path / "texts.csv"), "--text-column",
                 "message"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("spam\t")
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x"]) == 2
    assert "use `scratchllm classify`" in capsys.readouterr().err
    assert main(["classify", "--checkpoint", str(run), "fine", " "]) == 2  # nothing to classify is not an answer
    assert "text argument 2 is empty" in capsys.readouterr().err


@pytest.mark.parametrize("trainable,checkpoint", [("last-block", "gpt-tiny"), ("lora", "gpt-tiny"),
                                                   ("lora", "qwen3-moe-tiny"), ("last-block", "gemma3-tiny")])
def test_classification_resume_is_exact(tmp_path, trainable, checkpoint):
    from scratchllm.training.classify import finetune_classifier
    from scratchllm.training.config import ClassifyConfig
    from scratchllm.training.state import list_checkpoints

    def cfg(out):
        return ClassifyConfig(checkpoint=checkpoint, data=str(shared_file(SPAM)), text_column="1", label_column="0",
                              trainable="last-block", lora=trainable == "lora", lora_rank=4, epochs=None,
                              max_steps=6, lr=1e-3, save_every=3, eval_every=3, eval_batches=1, batch_size=4,
                              max_length=32, out_dir=str(out), progress=False)  # fmt: skip

    finetune_classifier(cfg(tmp_path / "full"))

    def interrupt(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune_classifier(cfg(tmp_path / "cut"), on_step=interrupt)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step-000004"
    resumed = finetune_classifier(cfg(tmp_path / "cut"), resume=True)
    assert resumed.state.step == 6
    from scratchllm.checkpoints.io import load_tensors

    a, b = load_tensors(tmp_path / "full" / "model.safetensors"), load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if trainable == "lora":  # the run folder holds merged weights: a plain classifier loads them
        from scratchllm.checkpoints.load import load_classifier

        model, _, _ = load_classifier(tmp_path / "cut")
        assert not any("lora" in k for k in a) and model(torch.tensor([[1, 2, 3]])).shape == (1, 2)


@pytest.mark.parametrize("content,args,fragment", [
    ("text,label\nhello,a\n", [], "single class 'a'"),
    ("text,label\n", [], "no records"),
    ("words,label\nhello,a\nbye,b\n", [], "no column 'text'"),
    ('{"text": "hi"}\n', [], ":1: record has no field 'label'"),
    ('{"text": "hi", "label": 1}\n{"text": "yo", "label": NaN}\n', [], ":2: field 'label' is nan"),
    ('{"text": "hi", "label": 1}\n{"text": "yo", "label": [0]}\n', [], ":2: field 'label' should be a string"),
    # an empty text is named by its line in the file, not by its place after balancing and shuffling
    ("text,label\nhello,a\nbye,b\n,a\nagain,b\n", [], "data.csv:4: field 'text' is empty"),
    ('{"text": "hi", "label": 1}\n\n{"text": "  ", "label": 0}\n', [], "data.jsonl:3: field 'text' is empty"),
])  # fmt: skip
def test_bad_labelled_files(tmp_path, capsys, content, args, fragment):
    path = tmp_path / ("data.jsonl" if content.startswith("{") else "data.csv")
    path.write_text(content)
    assert main(["finetune", "classify", "--checkpoint", "gpt-tiny", "--data", str(path),
                 "--out-dir", str(tmp_path / "run"), *args]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and str(path) in err
    assert not (tmp_path / "run").exists()


def test_one_class_has_one_spelling(tmp_path):
    """1, 1.0, "1" and " 1 " are one class, as 0 and "0.0" are (they were four classes and two); other text
    labels stay as written."""
    records = [("a", 1), ("b", 1.0), ("c", "1"), ("d", " 1 "), ("e", 0), ("f", "0.0"), ("g", 0.5), ("h", "0.50")]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in records))
    data = read_labelled(path)
    assert data.names == ["0", "0.5", "1"] and data.labels == [2, 2, 2, 2, 0, 0, 1, 1]
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("text,label\nx,spam\ny, ham\nz,Spam\n")
    assert read_labelled(csv_path).names == ["Spam", "ham", "spam"]


def test_tied_backbone_trains_with_adam():
    """A tied GPT-2 backbone without its LM head: the embedding's gradient must be dense for AdamW."""
    torch.manual_seed(0)
    model = SequenceClassifier(build_model("gpt-tiny", tie_embeddings=True), 2, "last")
    ids = torch.randint(0, 512, (2, 10))
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1])).backward()
    assert not model.backbone.tok_emb.weight.grad.is_sparse
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    opt.step()


def test_book_recipe_config_is_the_books_settings():
    """configs/classify-sms-book.yaml (needs the internet to run) parses into the book's recipe."""
    from pathlib import Path

    from scratchllm.training.config import ClassifyConfig, build_config

    cfg = build_config(Path(__file__).parents[1] / "configs" / "classify-sms-book.yaml", ClassifyConfig)
    assert (cfg.checkpoint, cfg.data, cfg.trainable, cfg.pooling) == ("gpt2", "sms-spam", "last-block", "last")
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (5e-5, 5e-5, 0.1, 8, 5)
    assert (cfg.train_fraction, cfg.val_fraction, cfg.split_seed, cfg.balance) == (0.7, 0.1, 123, True)


def test_named_dataset_is_unpacked_from_its_archive_in_the_cache(tmp_path, monkeypatch):
    """`--data sms-spam` downloads the UCI zip once; here the zip is already in the cache (offline)."""
    import zipfile

    from scratchllm.data.registry import dataset_file

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    folder = tmp_path / "datasets" / "sms-spam"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "sms_spam_collection.zip", "w") as z:
        z.write(shared_file(SPAM), "SMSSpamCollection")
        z.writestr("readme", "the UCI readme")
    path = dataset_file("sms-spam", "labelled")
    assert path.read_bytes() == shared_file(SPAM).read_bytes()
    from scratchllm.training.classify import load_splits
    from scratchllm.training.config import ClassifyConfig

    train, val, test = load_splits(ClassifyConfig(data="sms-spam"))
    assert (len(train), len(val), len(test)) == (1045, 149, 300)


def test_book_recipe_runs_offline_on_a_local_gpt2_folder(tmp_path, capsys):
    """The recipe's mechanics without the hub: a HuggingFace GPT-2 folder stands in for `gpt2` and the
    repository's copy of the SMS file for `sms-spam`; everything else comes from the config as shipped."""
    from pathlib import Path

    torch.manual_seed(0)
    from scratchllm.checkpoints.io import save_model

    save_model(build_model("gpt-tiny", vocab_size=50257, context_length=128, tie_embeddings=True), tmp_path / "m")
    load_tokenizer("gpt2").save(tmp_path / "m" / "scratchllm-tokenizer.json")
    assert main(["convert", "--to", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 0
    config = Path(__file__).parents[1] / "configs" / "classify-sms-book.yaml"
    args = ["finetune", "classify", "--config", str(config), "--checkpoint", str(tmp_path / "hf"), "--data",
            str(shared_file(SPAM)), "--text-column", "1", "--label-column", "0", "--epochs", "1", "--max-length",
            "32", "--eval-every", "100", "--out-dir", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "data 1,045 / 149 / 300 texts" in out and "pooling last;" in out and "(last-block), 130 steps" in out
    assert "(last-block)" in out and (tmp_path / "run" / "accuracy.png").exists()


def test_classify_reads_the_position_training_read(tmp_path, capsys):
    """With the book's `last` pooling the classifier reads the final, padding position of texts padded to the
    training length: `scratchllm classify` must pad the same way, so its labels for the test split reproduce
    the confusion matrix of the run's own test report."""
    from scratchllm.training.classify import load_splits
    from scratchllm.training.config import ClassifyConfig

    args = _finetune_args(tmp_path, "--epochs", "1")
    args[args.index("last-non-pad")] = "last"
    assert main(args) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = [r for r in records if r["kind"] == "eval"][-1]["test"]
    _, _, test = load_splits(ClassifyConfig(data=str(shared_file(SPAM)), text_column="1", label_column="0"))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in test.texts))
    capsys.readouterr()
    assert main(["classify", "--checkpoint", str(run), "--file", str(tmp_path / "test.jsonl"), "--json"]) == 0
    predicted = [test.names.index(json.loads(line)["label"]) for line in capsys.readouterr().out.splitlines()]
    confusion = [[0, 0], [0, 0]]
    for truth, guess in zip(test.labels, predicted):
        confusion[truth][guess] += 1
    assert confusion == report["confusion"]


def test_every_named_dataset_comes_from_the_one_registry(tmp_path, monkeypatch, capsys):
    """The book's three datasets are found the same way by the task that reads them (here from a filled cache,
    as after their first download); a name of another task's kind is refused with the right names."""
    import shutil

    from scratchllm.cli.main import main
    from scratchllm.data.registry import DATASETS, dataset_file

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    for name, source in (("book-instructions", "instruction-data.json"),
                         ("book-preferences", "ch07/instruction-data-with-preference.json")):  # fmt: skip
        target = tmp_path / "datasets" / name / DATASETS[name].file
        target.parent.mkdir(parents=True)
        shutil.copy(shared_file(source), target)
    from scratchllm.checkpoints.io import save_model
    from scratchllm.models import build_model
    from scratchllm.tokenizers.formats import load_tokenizer

    book = shared_file("instruction-data.json").read_bytes()
    assert dataset_file("book-instructions", "instructions").read_bytes() == book
    save_model(build_model("gpt-tiny", vocab_size=50257, context_length=32), tmp_path / "model")
    load_tokenizer("gpt2").save(tmp_path / "model" / "scratchllm-tokenizer.json")
    assert main(["respond", "--checkpoint", str(tmp_path / "model"), "--style", "alpaca", "--data",
                 "book-instructions", "--max-new-tokens", "1", "--out", str(tmp_path / "r.json")]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "r.json").read_text())) == 110  # the book's test split
    capsys.readouterr()
    assert main(["finetune", "classify", "--data", "book-preferences", "--checkpoint", "gpt-tiny",
                 "--out-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "not a named labelled dataset (sms-spam)" in err and not (tmp_path / "run").exists()
    # A named dataset's cached copy is an input: no output may be it, hold it or sit inside its folder.
    cached = dataset_file("book-instructions", "instructions")
    assert main(["respond", "--checkpoint", str(tmp_path / "model"), "--style", "alpaca", "--data",
                 "book-instructions", "--out", str(cached), "--overwrite"]) == 2  # fmt: skip
    assert "sits inside --data" in capsys.readouterr().err
    assert main(["finetune", "instruct", "--checkpoint", str(tmp_path / "model"), "--data", "book-instructions",
                 "--out-dir", str(tmp_path / "datasets"), "--overwrite"]) == 2  # fmt: skip
    assert "contains --data" in capsys.readouterr().err and cached.read_bytes() == book
