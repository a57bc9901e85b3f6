"""DPO (book ch. 7 bonus): the loss's known values, log-probabilities over response tokens only, a frozen
reference, and reward margins that rise on a small model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchllm.models import build_model
from scratchllm.training.config import DPOConfig
from scratchllm.training.dpo import collate_pairs, dpo_loss, finetune_dpo, sequence_logp


def test_loss_values():
    same = torch.tensor([-1.2, -0.7])
    start = dpo_loss(same, same - 1, same, same - 1, beta=0.1, scale_rewards=False)
    assert start["loss"].item() == pytest.approx(math.log(2)) and start["reward_margin"].item() == 0
    # chosen log-ratio +0.5, rejected -0.5: loss -log sigmoid(0.1 * 1.0) = log(1 + e^-0.1)
    t = lambda v: torch.tensor([v])  # noqa: E731
    out = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, scale_rewards=False)
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-6)
    assert (out["reward_chosen"].item(), out["reward_rejected"].item(), out["reward_margin"].item()) == (0.5, -0.5, 1.0)
    assert out["reward_accuracy"].item() == 1.0
    scaled = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, scale_rewards=True)
    assert scaled["reward_margin"].item() == pytest.approx(0.1) and scaled["loss"].item() == out["loss"].item()


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_log_probs_cover_response_tokens_only(reduce):
    torch.manual_seed(0)
    model = build_model("gpt-tiny").eval()
    triples = [([5, 6, 7], [8, 9], [10]), ([11, 12], [13, 14, 15, 16], [17, 18])]  # prompts of different lengths
    pairs = [(p + c, p + r, len(p)) for p, c, r in triples]
    ci, ct, cm, ri, rt, rm = collate_pairs(pairs, pad_id=0, max_length=64)
    with torch.no_grad():
        got = sequence_logp(model, ci, ct, cm, reduce)
        for row, (prompt, chosen, _) in enumerate(triples):
            seq = torch.tensor([prompt + chosen])
            logp = torch.log_softmax(model(seq[:, :-1]), -1)[0]
            picked = [logp[j - 1, seq[0, j]].item() for j in range(len(prompt), seq.shape[1])]  # response only
            expected = sum(picked) / (len(picked) if reduce == "mean" else 1)
            assert got[row].item() == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    words = ["cat", "dog", "fish", "bird", "frog", "lion", "wolf", "duck", "goat", "deer", "bear", "mole"]
    records = [{"instruction": f"Describe the {w}.", "input": "", "output": f"The {w} is nice.",
                "chosen": f"The {w} is nice.", "rejected": f"The {w} is awful, go away."} for w in words]  # fmt: skip
    path = tmp_path_factory.mktemp("dpo") / "prefs.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("lora", [False, True])
def test_margins_rise_and_the_reference_stays_frozen(pref_file, tmp_path, lora):
    from scratchllm.checkpoints.load import load_for_finetuning

    cfg = DPOConfig(checkpoint="gpt-tiny", data=str(pref_file), style="alpaca", out_dir=str(tmp_path / "run"),
                    batch_size=4, epochs=None, max_steps=20, lr=3e-3 if lora else 1e-3, min_lr=1e-4, eval_every=20,
                    eval_batches=1, progress=False, lora=lora, lora_rank=4,
                    lora_targets="qkv,proj,fc1,fc2")  # fmt: skip
    result = finetune_dpo(cfg)
    first, last = result.evals[0], result.evals[-1]
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6) and first["train_reward_margin"] == 0
    assert last["train_reward_margin"] > 0.5 and last["train_loss"] < math.log(2) - 0.03  # beta 0.1: a slow loss
    assert last["train_reward_accuracy"] == 1.0
    if not lora:
        start, _ = load_for_finetuning("gpt-tiny", None, cfg.seed, "cpu")
        ref = result.reference.state_dict()
        assert all(torch.equal(ref[k], v) for k, v in start.state_dict().items())  # bit-identical


def test_book_recipe_config():
    from pathlib import Path

    from scratchllm.training.config import build_config

    cfg = build_config(Path(__file__).parents[1] / "configs" / "dpo-book.yaml", DPOConfig)
    assert (cfg.beta, cfg.logp, cfg.lr, cfg.epochs, cfg.batch_size, cfg.weight_decay) == (0.1, "mean", 5e-6, 1, 8, 0.01)


def test_the_runs_splits_are_the_books(tmp_path, monkeypatch):
    """On the book's 1,100 preference records the run trains on the first 935, validates on the last 55 and
    keeps the 110 between them for the test (the book's 85 / 10 / 5 split in file order)."""
    from scratchllm.data.instructions import read_records
    from scratchllm.prompts import get_style
    from scratchllm.tokenizers import load_tokenizer
    from scratchllm.training import dpo

    from .conftest import shared_file

    path = shared_file("ch07/instruction-data-with-preference.json")
    records = read_records(path)
    seen = {}
    original = dpo.DPOTask.__init__

    def capture(self, splits, *args, **kwargs):
        seen.update(splits)
        original(self, splits, *args, **kwargs)

    monkeypatch.setattr(dpo.DPOTask, "__init__", capture)
    cfg = DPOConfig(checkpoint="gpt-tiny", data=str(path), style="alpaca", out_dir=str(tmp_path / "run"), batch_size=2,
                    epochs=None, max_steps=1, eval_batches=1, progress=False, max_length=64)  # fmt: skip
    finetune_dpo(cfg)
    expected = {"train": records[:935], "test": records[935:1045], "val": records[1045:]}
    tokenizer = load_tokenizer("gpt2")
    for name, part in expected.items():
        want = dpo.encode_pairs(part, get_style("alpaca"), tokenizer, str(path))
        assert len(seen[name]) == len(want) and seen[name][0] == want[0] and seen[name][-1] == want[-1], name


@pytest.mark.parametrize("checkpoint", ["qwen3-moe-tiny", "gemma3-tiny"])
def test_dpo_with_lora_on_a_mixture_of_experts_and_a_sliding_window_model(pref_file, tmp_path, checkpoint):
    """The same runner on the later families: LoRA on attention (experts are not Linear layers), the reference
    being the model with its adapters off; its margin rises as GPT-2's does."""
    cfg = DPOConfig(checkpoint=checkpoint, data=str(pref_file), style="alpaca", out_dir=str(tmp_path / "run"),
                    batch_size=4, epochs=None, max_steps=20, lr=3e-3, min_lr=1e-4, eval_every=20, eval_batches=1,
                    progress=False, lora=True, lora_rank=4, lora_targets="qkv,proj")  # fmt: skip
    result = finetune_dpo(cfg)
    first, last = result.evals[0], result.evals[-1]
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert last["train_reward_margin"] > 0.2


def _book_format_input(entry: dict) -> str:
    """The book's `format_input` (ch. 7.2), written from its printed definition."""
    text = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{entry['instruction']}")  # fmt: skip
    return text + (f"\n\n### Input:\n{entry['input']}" if entry["input"] else "")


def test_book_response_mask_reproduces_the_books_collate_and_ours_leaves_out_the_marker():
    """The book's preference collate tokenises `format_input + "\\n\\n### Response:\\n" + chosen` whole and masks the
    first `len(prompt) + 2` tokens; its log-probabilities then count mask[1:] over the shifted targets. With
    `response_mask: book` ours selects the same targets of the same tokens; the default counts the response
    alone, 4 tokens fewer (`### Response:\\n`) on every record."""
    from scratchllm.data.instructions import read_records
    from scratchllm.prompts import get_style
    from scratchllm.tokenizers import load_tokenizer
    from scratchllm.training.dpo import encode_pairs

    from .conftest import shared_file

    records = read_records(shared_file("ch07/instruction-data-with-preference.json"))[:8]
    tokenizer = load_tokenizer("gpt2")
    book_counts = []
    for entry, book_pair, ours_pair in zip(records, encode_pairs(records, get_style("alpaca"), tokenizer, "f", True),
                                           encode_pairs(records, get_style("alpaca"), tokenizer, "f")):  # fmt: skip
        prompt = tokenizer.encode(_book_format_input(entry))
        for side, key in ((0, "chosen"), (1, "rejected")):
            sequence = tokenizer.encode(f"{_book_format_input(entry)}\n\n### Response:\n{entry[key]}")
            book_mask = [j >= len(prompt) + 2 for j in range(len(sequence))][1:]  # over the shifted targets
            inputs, targets, mask = collate_pairs([book_pair], pad_id=50256, max_length=1024)[3 * side : 3 * side + 3]
            assert inputs[0].tolist() == sequence[:-1] and targets[0].tolist() == sequence[1:]
            assert mask[0].bool().tolist() == book_mask
            ours = collate_pairs([ours_pair], pad_id=50256, max_length=1024)[3 * side + 2]
            assert int(ours.sum()) == sum(book_mask) - 4
            if side == 0:
                book_counts.append(sum(book_mask))
    assert book_counts[:4] == [24, 12, 13, 15]  # the count of the book's own collate on these records


def test_book_recipe_config_reproduces_the_books_mask(pref_file, tmp_path):
    from pathlib import Path

    from scratchllm.training.config import build_config

    cfg = build_config(Path(__file__).parents[1] / "configs" / "dpo-book.yaml", DPOConfig)
    assert cfg.response_mask == "book" and DPOConfig().response_mask == "response"
    with pytest.raises(Exception, match="alpaca prompt"):
        finetune_dpo(DPOConfig(checkpoint="gpt-tiny", data=str(pref_file), style="chatml", response_mask="book",
                               out_dir=str(tmp_path / "run")))  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_lora_dpo_run_exports_its_adapter_for_peft(pref_file, tmp_path):
    """Every LoRA run with a causal-LM head leaves its unmerged adapter in PEFT's format: on the transformers
    base, peft computes the run's merged model."""
    import peft
    import transformers

    from scratchllm.checkpoints.io import save_model
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.cli.main import main
    from scratchllm.tokenizers import load_tokenizer

    torch.manual_seed(0)
    save_model(build_model("gpt-tiny", vocab_size=50257), tmp_path / "m")
    load_tokenizer("gpt2").save(tmp_path / "m" / "scratchllm-tokenizer.json")
    assert main(["convert", "--to", "hf", str(tmp_path / "m"), str(tmp_path / "hf")]) == 0
    cfg = DPOConfig(checkpoint=str(tmp_path / "hf"), data=str(pref_file), style="alpaca", out_dir=str(tmp_path / "run"),
                    batch_size=4, epochs=None, max_steps=4, lr=3e-2, eval_every=4, eval_batches=1, progress=False,
                    lora=True, lora_rank=4, lora_alpha=8)  # fmt: skip
    finetune_dpo(cfg)
    idx = torch.tensor([[464, 3290, 318, 257, 1332, 13]])
    with torch.no_grad():
        ours = load_checkpoint(tmp_path / "run", "fp32").model(idx)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        plain = base(idx).logits.clone()
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "run" / "peft-adapter").eval()
        torch.testing.assert_close(adapted(idx).logits, ours, atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # the adapters trained: not the base's logits
