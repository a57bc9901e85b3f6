"""Hostile and careless inputs: one clear line and exit 2, no traceback, and nothing the user owns changed.

Each case builds the bad input for real (files on disk, flags, a damaged run) and runs the command line
as a user would; `snapshot` proves the protected files are byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoints.io import load_tensors, save_model, save_tensors
from scratchllm.cli.main import main
from scratchllm.models import build_model

from .conftest import VERDICT


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys, args: list[str], *fragments: str, code: int = 2) -> str:
    """Run the CLI; it must exit with `code` and print exactly one line to stderr holding every fragment."""
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def tiny_run_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--model", "gpt-tiny", "--model-context-length", "32", "--data", str(VERDICT),
            "--vocab-size", "300", "--data-out", str(data_dir), "--out-dir", str(out), "--max-steps", "2",
            "--batch-size", "2", "--dtype", "fp32", "--eval-every", "2", "--eval-batches", "1", "--save-every", "2",
            "--sample-tokens", "2", "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture
def model_dir(tmp_path):
    """A small saved model folder with the GPT-2 tokenizer (vocabulary 50,257)."""
    from scratchllm.tokenizers.formats import load_tokenizer

    torch.manual_seed(0)
    save_model(build_model("gpt-tiny", vocab_size=50257, context_length=32), tmp_path / "model")
    load_tokenizer("gpt2").save(tmp_path / "model" / "scratchllm-tokenizer.json")
    return tmp_path / "model"


# -- 1. nothing a user owns is overwritten without --overwrite, and then replaced whole ----------------------


@pytest.mark.parametrize("existing", ["finished run without checkpoints", "HF model folder", "notes"])
def test_pretrain_refuses_a_non_empty_out_dir_then_replaces_it_with_overwrite(data_dir, tmp_path, capsys, existing):
    out = tmp_path / "out"
    out.mkdir()
    if existing == "finished run without checkpoints":
        assert main(tiny_run_args(data_dir, out)) == 0
        import shutil

        shutil.rmtree(out / "checkpoints")
    elif existing == "HF model folder":
        (out / "config.json").write_text('{"model_type": "gpt2"}')
        (out / "model.safetensors").write_bytes(b"weights the user downloaded")
    else:
        (out / "notes.txt").write_text("my notes")
    capsys.readouterr()
    before = snapshot(out)
    fails(capsys, tiny_run_args(data_dir, out), f"--out-dir {out} already holds files", "--overwrite")
    assert snapshot(out) == before
    assert main(tiny_run_args(data_dir, out, "--overwrite")) == 0
    after = snapshot(out)
    assert "notes.txt" not in after and "config.json" not in after  # replaced whole, not mixed
    assert {"model.safetensors", "metrics.jsonl", "config.yaml"} <= set(after)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"train"' in x] == [2]  # a fresh log, not appended


def test_pretrain_out_dir_that_is_a_file(data_dir, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    fails(capsys, tiny_run_args(data_dir, target), "is a file")
    assert target.read_text() == "keep me"


def test_resume_and_overwrite_together_are_refused(data_dir, tmp_path, capsys):
    fails(capsys, tiny_run_args(data_dir, tmp_path / "r", "--resume", "--overwrite"), "give one of them")


def test_overwrite_never_deletes_the_current_folder(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("x")
    fails(capsys, tiny_run_args(data_dir, Path("."), "--overwrite"), "refusing to replace the current folder")
    assert (tmp_path / "precious.txt").read_text() == "x"


def test_convert_protects_its_output_and_its_source(model_dir, tmp_path, capsys):
    source_before = snapshot(model_dir)
    fails(capsys, ["convert", "--to", "hf", str(model_dir), str(model_dir)], "is SOURCE", "an input of this command")
    fails(capsys, ["convert", "--to", "hf", str(model_dir), str(model_dir / "inside")], "sits inside SOURCE")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.model").write_bytes(b"an old SentencePiece file")
    fails(capsys, ["convert", "--to", "hf", str(model_dir), str(out)], "not empty", "--overwrite")
    assert snapshot(out) == {"tokenizer.model": b"an old SentencePiece file"}
    assert main(["convert", "--to", "hf", str(model_dir), str(out), "--overwrite"]) == 0
    assert "tokenizer.model" not in snapshot(out) and (out / "tokenizer.json").exists()  # not a mix of both
    assert snapshot(model_dir) == source_before


def test_tokenizer_train_does_not_replace_a_file(tmp_path, capsys):
    out = tmp_path / "tok.json"
    out.write_text("the user's file")
    fails(capsys, ["tokenizer", "train", "--data", str(VERDICT), "--vocab-size", "300", "--out", str(out)],
          "already exists", "--overwrite")  # fmt: skip
    assert out.read_text() == "the user's file"
    assert main(["tokenizer", "train", "--data", str(VERDICT), "--vocab-size", "300", "--out", str(out),
                 "--overwrite"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["format"] == "scratchllm-bpe"


def test_prepare_keeps_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    args = ["prepare", "--data", str(VERDICT), "--tokenizer", "gpt2", "--data-out", str(out)]
    fails(capsys, args, "not empty", "--overwrite")
    assert snapshot(out) == {"thesis.tex": b"years of work"}
    assert main([*args, "--overwrite"]) == 0
    assert "thesis.tex" not in snapshot(out) and (out / "tokens.bin").exists()


# -- 2. infinity and NaN are rejected where they are read; a diverging run stops without saving ---------------


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "-inf"),
                                        ("--grad-clip", "nan"), ("--val-fraction", "nan")])  # fmt: skip
def test_non_finite_training_flags(data_dir, tmp_path, capsys, flag, value):
    field = flag[2:].replace("-", "_")
    args = tiny_run_args(data_dir, tmp_path / "run", f"{flag}={value}")
    fails(capsys, args, f"field '{field}' should be a finite number")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--temperature", "--top-p", "--min-p", "--repetition-penalty"])
def test_non_finite_sampling_flags(model_dir, capsys, flag):
    fails(capsys, ["generate", "--checkpoint", str(model_dir), "--prompt", "Hi", flag, "nan"],
          f"field '{flag[2:].replace('-', '_')}' should be a finite number")  # fmt: skip


def test_diverging_run_stops_and_keeps_the_last_good_weights(data_dir, tmp_path, monkeypatch):
    """One absurd update (the schedule returns 1e30 for one step; configs refuse such a learning rate)
    blows the weights up; the run stops, and the step-2 weights and checkpoint stay as they were."""
    import scratchllm.training.loop as loop_module
    from scratchllm.errors import ScratchLLMError
    from scratchllm.training.config import PretrainConfig
    from scratchllm.training.trainer import pretrain

    run = tmp_path / "run"
    cfg = PretrainConfig(model="gpt-tiny", model_overrides={"context_length": 32}, data=str(VERDICT), vocab_size=300,
                         data_out=str(data_dir), out_dir=str(run), max_steps=8, batch_size=2, dtype="fp32",
                         eval_every=2, eval_batches=1, save_every=2, sample_tokens=2, progress=False)  # fmt: skip
    real_lr_at = loop_module.lr_at
    monkeypatch.setattr(loop_module, "lr_at", lambda step, *a: 1e30 if step == 2 else real_lr_at(step, *a))
    saved: dict[str, bytes] = {}
    with pytest.raises(ScratchLLMError, match=r"training diverged: .* at step [34]; stopped without saving"):
        pretrain(cfg, on_step=lambda step: saved.update(snapshot(run)) if step == 2 else None)
    after = snapshot(run)
    assert after["model.safetensors"] == saved["model.safetensors"]  # the step-2 weights, untouched
    assert {k for k in after if "checkpoints" in k} == {k for k in saved if "checkpoints" in k}
    assert all(torch.isfinite(t).all() for t in load_tensors(run / "model.safetensors").values())


def test_non_finite_weights_are_refused_when_read(model_dir, capsys):
    tensors = load_tensors(model_dir / "model.safetensors")
    tensors["blocks.0.ff.fc1.weight"][0, 0] = float("nan")
    save_tensors(tensors, model_dir / "model.safetensors")
    fails(capsys, ["generate", "--checkpoint", str(model_dir), "--prompt", "Hi"], "'blocks.0.ff.fc1.weight' holds NaN")


# -- 3. pieces that do not belong together ------------------------------------------------------------------------


def test_tokenizer_larger_than_the_model(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(build_model("gpt-tiny"), tmp_path / "m")  # vocabulary 512
    fails(capsys, ["generate", "--checkpoint", str(tmp_path / "m"), "--tokenizer", "gpt2", "--prompt", "Hi"],
          "50,257 ids but the model's vocabulary is 512")  # fmt: skip
    from scratchllm.tokenizers.formats import load_tokenizer

    load_tokenizer("gpt2").save(tmp_path / "m" / "scratchllm-tokenizer.json")
    fails(capsys, ["generate", "--checkpoint", str(tmp_path / "m"), "--prompt", "Hi"], "do not belong together")


def test_token_file_beyond_its_tokenizer(data_dir, tmp_path, capsys):
    import shutil

    import numpy as np

    assert main(tiny_run_args(data_dir, tmp_path / "first")) == 0
    damaged = tmp_path / "damaged-data"
    shutil.copytree(data_dir, damaged)
    tokens = np.fromfile(damaged / "tokens.bin", dtype=np.uint16)
    tokens[100] = 4000  # the tokenizer has 300 ids
    tokens.tofile(damaged / "tokens.bin")
    capsys.readouterr()
    fails(capsys, tiny_run_args(damaged, tmp_path / "second"), "tokens.bin holds id 4,000", "300 ids")


def test_a_prepared_folder_given_as_data_is_used_as_prepared(data_dir, tmp_path, capsys):
    assert main(tiny_run_args(data_dir, tmp_path / "first")) == 0
    args = tiny_run_args(data_dir, tmp_path / "second")
    args[args.index("--data") + 1] = str(data_dir)  # the prepared folder, not a corpus
    args[args.index("--data-out") + 1] = str(tmp_path / "would-be-new")
    assert main(args) == 0
    assert not (tmp_path / "would-be-new").exists()  # not tokenized again as text
    assert json.loads((tmp_path / "second" / "model_config.json").read_text())["vocab_size"] == 300


# -- 5. internal exceptions become messages --------------------------------------------------------------------


BAD_FLAGS = [("--sample-every", "0", "'sample_every' must be >= 1"), ("--seq-len", "1", "'seq_len' must be >= 2"),
             ("--dtype", "int4", "'dtype' must be auto, fp32 or bf16")]  # fmt: skip


@pytest.mark.parametrize("flag,value,fragment", BAD_FLAGS)
def test_bad_flag_values(data_dir, tmp_path, capsys, flag, value, fragment):
    fails(capsys, tiny_run_args(data_dir, tmp_path / "run", flag, value), fragment)


BAD_CONFIGS = [("max_steps: abc\n", "field 'max_steps' should be an integer, got 'abc'"),
               ("lr: .inf\n", "field 'lr' should be a finite number"),
               ("batch_size: true\n", "field 'batch_size' should be an integer"),
               ("model_overrides: {n_layers: two}\n", "field 'n_layers' should be an integer"),
               ("lr: [1, 2]\n", "field 'lr' should be a number")]  # fmt: skip


@pytest.mark.parametrize("text,fragment", BAD_CONFIGS)
def test_wrongly_typed_config_files(tmp_path, capsys, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text("model: gpt-tiny\n" + text)
    err = fails(capsys, ["pretrain", "--config", str(config), "--out-dir", str(tmp_path / "run")], fragment)
    if "model_overrides" not in text:
        assert str(config) in err  # the value came from the file: the file is named


def test_hf_config_missing_a_field(model_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["convert", "--to", "hf", str(model_dir), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["n_embd"]
    (out / "config.json").write_text(json.dumps(config))
    missing = f"{out}/config.json: missing field 'n_embd'"
    fails(capsys, ["generate", "--checkpoint", str(out), "--prompt", "Hi"], missing)
    fails(capsys, ["info", str(out)], "missing field 'n_embd'")


def test_missing_local_path_that_looks_like_a_hub_id(tmp_path, capsys, monkeypatch):
    import scratchllm.hub

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(scratchllm.hub, "HUB_URL", "http://127.0.0.1:9")  # a closed local port: offline, fast
    monkeypatch.chdir(tmp_path)
    fails(capsys, ["generate", "--checkpoint", "runs/missing", "--prompt", "Hi"],
          "--checkpoint runs/missing: no such local folder, and as hub repository 'runs/missing'")  # fmt: skip


@pytest.mark.parametrize("device,fragment", [("gpu", "expected cpu, cuda or cuda:N"), ("cuda", "no CUDA GPU")])
def test_unusable_device(capsys, device, fragment):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails(capsys, ["generate", "--checkpoint", "gpt-tiny", "--tokenizer", "gpt2", "--prompt", "x", "--device", device],
          fragment)  # fmt: skip


def test_info_reads_a_run_folder(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    assert "context, vocab   32, 50,257" in capsys.readouterr().out


def test_unexpected_exception_is_one_line_with_a_debug_hint(capsys, monkeypatch):
    import scratchllm.cli.info

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(scratchllm.cli.info, "run", broken)
    fails(capsys, ["info", "gpt-tiny"], "internal error in scratchllm (ZeroDivisionError: division by zero)",
          "scratchllm --debug info", code=1)  # fmt: skip
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "info", "gpt-tiny"])


def test_quiet_surprises_are_said(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(VERDICT), "--vocab-size", "100000", "--out", str(out)]) == 0
    assert "note: the corpus supports only" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "100"]) == 0
    assert "the model's context of 32 tokens is full" in capsys.readouterr().err
    assert main(tiny_run_args(data_dir, tmp_path / "noval", "--val-fraction", "0", "--data-out",
                              str(tmp_path / "noval-data"))) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "no validation split" in text and "nan" not in text


@pytest.mark.parametrize("verb", ["classify", "instruct", "dpo"])
@pytest.mark.parametrize("where", ["is", "contains", "sits inside"])
def test_no_run_folder_is_contains_or_sits_inside_an_input(model_dir, tmp_path, capsys, verb, where):
    """`--overwrite` with an --out-dir that is (or holds, or lies inside) the starting model or the data would
    delete it: refused before anything is written."""
    holder = tmp_path / "holder"
    source = holder / "model"
    source.parent.mkdir()
    import shutil

    shutil.copytree(model_dir, source)
    (holder / "unrelated.txt").write_text("keep me")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b", "text": "t", "label": "x"}]))
    out = {"is": source, "contains": holder, "sits inside": source / "run"}[where]
    before = snapshot(holder)
    fails(capsys, ["finetune", verb, "--checkpoint", str(source), "--data", str(data), "--out-dir", str(out),
                   "--overwrite"], f"--out-dir {out}: {where} --checkpoint", "choose another --out-dir")  # fmt: skip
    assert snapshot(holder) == before
    fails(capsys, ["finetune", verb, "--checkpoint", str(source), "--data", str(data), "--out-dir", str(data),
                   "--overwrite"], "is --data")  # fmt: skip
    assert data.exists()


def test_respond_never_writes_over_its_records(model_dir, tmp_path, capsys):
    data = tmp_path / "records.json"
    data.write_text(json.dumps([{"instruction": f"i{k}", "input": "", "output": "o"} for k in range(20)]))
    before = data.read_bytes()
    fails(capsys, ["respond", "--checkpoint", str(model_dir), "--data", str(data), "--out", str(data), "--overwrite",
                   "--style", "alpaca"], "--out", "is --data")  # fmt: skip
    assert data.read_bytes() == before
    small = tmp_path / "three.json"  # 85/10/5 of 3 records leaves no test record: an error, not an empty file
    small.write_text(json.dumps([{"instruction": f"i{k}", "input": "", "output": "o"} for k in range(3)]))
    fails(capsys, ["respond", "--checkpoint", str(model_dir), "--data", str(small), "--out", str(tmp_path / "r.json"),
                   "--style", "alpaca"], "test split is empty", "--split all")  # fmt: skip
    assert not (tmp_path / "r.json").exists()


def test_resume_with_a_changed_shape_flag_is_refused_before_anything_is_written(tmp_path, capsys):
    """`--resume --no-lora` or `--lora-rank 8` on a LoRA run would rebuild another model: one line, and the
    run folder (config.yaml included) stays as it was, so the run still resumes."""
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"message number {i},{'spam' if i % 2 else 'ham'}\n" for i in range(40)))
    run = tmp_path / "run"
    base = ["finetune", "classify", "--checkpoint", "gpt-tiny", "--data", str(data), "--out-dir", str(run),
            "--lora", "--lora-rank", "4", "--epochs", "1", "--batch-size", "4", "--eval-batches", "1",
            "--no-progress"]  # fmt: skip
    assert main(base) == 0
    capsys.readouterr()
    before = snapshot(run)
    for changed in (["--no-lora"], ["--lora-rank", "8"], ["--checkpoint", "llama-tiny"]):
        resumed = ["finetune", "classify", "--out-dir", str(run), "--resume", *changed]
        fails(capsys, resumed, "--resume:", "differs from the run's")
        assert snapshot(run) == before, changed
    assert main(["finetune", "classify", "--out-dir", str(run), "--resume", "--lr", "1e-4"]) == 0  # lr may change


def test_finetune_inputs_that_used_to_break_a_run(tmp_path, capsys):
    """Each once ran into NaN, the kernel's OOM killer or an internal error; now one line before any work."""
    records = tmp_path / "long.json"
    records.write_text(json.dumps([{"instruction": "word " * 80, "input": "", "output": "ok"}] * 12))
    fails(capsys, ["finetune", "instruct", "--checkpoint", "gpt-tiny", "--data", str(records), "--mask-prompt",
                   "--max-length", "32", "--out-dir", str(tmp_path / "a"), "--no-progress"],
          "--mask-prompt: every training prompt", "no response token is left")  # fmt: skip
    fails(capsys, ["finetune", "instruct", "--checkpoint", "gpt-tiny", "--data", str(records), "--lora",
                   "--lora-rank", "100000", "--out-dir", str(tmp_path / "b"), "--no-progress"],
          "lora rank 100000 exceeds both sides of layer")  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_labelled_files_with_long_fields_quoted_newlines_u2028_and_a_bom(tmp_path):
    from scratchllm.data.classification import read_labelled

    long_text = "x" * 300_000
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('\ufefftext,label\n"two\nlines",a\n' + long_text + ",b\nplain,a\n", encoding="utf-8")
    data = read_labelled(csv_file)
    assert data.texts == ["two\nlines", long_text, "plain"] and data.names == ["a", "b"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"text": "sep\u2028arated", "label": "a"}, ensure_ascii=False) + "\n"
                     + json.dumps({"text": "other", "label": "b"}) + "\n", encoding="utf-8")  # fmt: skip
    assert read_labelled(jsonl).texts == ["sep\u2028arated", "other"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_every_record_file_reads_past_a_byte_order_mark(tmp_path, suffix):
    """Windows editors start UTF-8 files with a BOM: instruction, preference and response files read the same."""
    from scratchllm.data.instructions import read_records
    from scratchllm.files import read_json

    records = [{"instruction": "Name a colour.", "input": "", "output": "Blue."}] * 2
    text = json.dumps(records) if suffix == ".json" else "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / f"r{suffix}"
    path.write_text("\ufeff" + text, encoding="utf-8")
    assert read_records(path) == records
    if suffix == ".json":
        assert read_json(path) == records


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(mask, tmp_path):
    """Weights, configs and tokenizers get the mode a plain `open` gives under the user's umask (safetensors
    alone writes 0600, which hid a run from a group that shares it)."""
    from scratchllm.checkpoints.convert import to_scratchllm
    from scratchllm.models import build_model
    from scratchllm.tokenizers.formats import load_tokenizer

    old = os.umask(mask)
    try:
        to_scratchllm(build_model("gpt-tiny"), load_tokenizer("gpt2"), tmp_path / "m", "alpaca")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert len(modes) >= 4 and set(modes.values()) == {0o666 & ~mask}, modes


def test_a_run_keeps_its_prompt_style_through_hf_and_back(tmp_path):
    """`convert --to hf` writes the style as the chat template; reading that folder back (`--to scratchllm`,
    or any verb on it) recognises it, where the style used to be lost."""
    from scratchllm.checkpoints.convert import to_scratchllm
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.prompts import STYLE_FILE
    from scratchllm.tokenizers.formats import load_tokenizer

    to_scratchllm(build_model("gpt-tiny", vocab_size=50257), load_tokenizer("gpt2"), tmp_path / "run", "phi3")
    assert main(["convert", "--to", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert load_checkpoint(tmp_path / "hf", "fp32").prompt_style == "phi3"
    assert main(["convert", "--to", "scratchllm", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / STYLE_FILE).read_text()) == {"style": "phi3"}
