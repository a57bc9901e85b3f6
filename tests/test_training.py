"""Pretraining: schedule, loss goes down, accumulation, exact resume, atomic checkpoints, errors, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from scratchllm.checkpoints.io import atomic_write, load_tensors
from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.errors import ScratchLLMError
from scratchllm.training import state as state_module
from scratchllm.training.config import PretrainConfig, build_config
from scratchllm.training.schedule import lr_at
from scratchllm.training.state import list_checkpoints
from scratchllm.training.trainer import pretrain

from .conftest import VERDICT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared")


def tiny_config(data_dir, out_dir, **changes) -> PretrainConfig:
    base = dict(model="gpt-tiny", model_overrides={"context_length": 32}, data=str(VERDICT), vocab_size=300,
                data_out=str(data_dir), out_dir=str(out_dir), max_steps=6, batch_size=4, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, dtype="fp32", eval_every=3, eval_batches=2, sample_every=6, sample_tokens=8,
                log_every=1, save_every=3, progress=False)  # fmt: skip
    base.update(changes)
    return PretrainConfig(**base)


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "model.safetensors")


def test_schedule_values():
    values = [lr_at(s, 1.0, 0.1, 10, 110) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # linear warm-up
    assert values[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert values[60] == pytest.approx(0.55)  # half way: mean of peak and floor
    assert values[110] == pytest.approx(0.1) and min(values) >= 0.1
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # monotone decay


def test_loss_goes_down_and_run_folder_is_complete(data_dir, tmp_path, device):
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=40, eval_every=20, save_every=20, batch_size=8,
                      device=device)
    result = pretrain(cfg)
    first, last = result.evals[0], result.evals[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert first["train_loss"] == pytest.approx(math.log(300), abs=0.5)  # starts near ln(vocab)
    assert last["train_loss"] < first["train_loss"] - 1.0
    run = tmp_path / "run"
    for name in ("config.yaml", "model.safetensors", "model_config.json", "scratchllm-tokenizer.json",
                 "metrics.jsonl", "loss.png"):  # fmt: skip
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "eval", "sample"}
    # MFU is capped at 1: a step faster than the peak measured on a busy machine raises the peak to it.
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1 and r["peak_memory_mib"] > 0
               for r in records if r["kind"] == "train")  # fmt: skip
    assert len(list_checkpoints(run)) == 2  # keep_last
    loaded = load_checkpoint(run, dtype="fp32")  # self-contained: weights + tokenizer
    assert loaded.tokenizer.vocab_size == 300 and loaded.source == "scratchllm"


def test_accumulation_equals_larger_batch(data_dir, tmp_path):
    big = pretrain(tiny_config(data_dir, tmp_path / "a", max_steps=2, batch_size=8, grad_accum=1))
    small = pretrain(tiny_config(data_dir, tmp_path / "b", max_steps=2, batch_size=4, grad_accum=2))
    a, b = final_weights(big.run_dir), final_weights(small.run_dir)
    # Summation order differs between one batch of 8 and two of 4. Adam's first steps move each weight by
    # about lr * sign(gradient), so a gradient entry within rounding of zero may flip and differ by up to
    # 2 * lr per step (seen on an AMX CPU: 1 of 16,384 entries). Every other entry must agree to 1e-5.
    for name in a:
        diff = (a[name] - b[name]).abs()
        assert diff.max() <= 2 * 3e-3 * 2 and (diff > 1e-5).float().mean() < 1e-3, name


def test_resume_is_exact(data_dir, tmp_path):
    overrides = {"model_overrides": {"context_length": 32, "drop_rate": 0.1}}  # dropout uses the RNG
    full = pretrain(tiny_config(data_dir, tmp_path / "full", **overrides))

    def interrupt(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(data_dir, tmp_path / "cut", **overrides), on_step=interrupt)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")][-1] == "step-000004"  # saved on Ctrl-C
    resumed = pretrain(tiny_config(data_dir, tmp_path / "cut", **overrides), resume=True)
    assert resumed.state.step == 6
    from scratchllm.training.loop import _logged_evals

    assert [e["step"] for e in _logged_evals(tmp_path / "cut" / "metrics.jsonl")] == [0, 3, 6]  # what loss.png shows
    a, b = final_weights(full.run_dir), final_weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_survives_a_crash_mid_write(data_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain(tiny_config(data_dir, run, max_steps=3))
    before = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(run)}
    real_save = state_module.save_tensors

    def dying_save(tensors, path, metadata=None):
        if "optimizer" in str(path):
            path.write_bytes(b"half a file")
            raise OSError("killed mid-write")
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(state_module, "save_tensors", dying_save)
    with pytest.raises(OSError, match="killed"):
        pretrain(tiny_config(data_dir, run, max_steps=6), resume=True)
    monkeypatch.undo()
    assert {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(run)} == before
    assert pretrain(tiny_config(data_dir, run, max_steps=6), resume=True).state.step == 6
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def broken_writer(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken_writer)
    assert target.read_bytes() == b"old" and list(tmp_path.glob(".file.bin.tmp*")) == []


def test_mismatched_and_corrupt_checkpoints(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(tiny_config(data_dir, run, max_steps=3))
    with pytest.raises(ScratchLLMError, match="already holds files.*--resume.*--overwrite"):
        pretrain(tiny_config(data_dir, run, max_steps=6))
    with pytest.raises(ScratchLLMError, match="--resume: --model-overrides .* differs from the run's"):
        pretrain(tiny_config(data_dir, run, max_steps=6, model_overrides={"context_length": 32, "n_layers": 3}),
                 resume=True)  # fmt: skip
    (ckpt,) = list_checkpoints(run)
    weights = ckpt / "model.safetensors"
    tensors = load_tensors(weights)
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"][:10]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights))
    with pytest.raises(ScratchLLMError, match="blocks.0.attn.qkv.weight.*shape"):
        pretrain(tiny_config(data_dir, run, max_steps=6), resume=True)
    assert list_checkpoints(run) == [ckpt]  # another model's checkpoint is not "damaged": left in place
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated file, and no older checkpoint to fall back on
    with pytest.raises(ScratchLLMError, match="no complete checkpoint left"):
        pretrain(tiny_config(data_dir, run, max_steps=6), resume=True)
    assert "model.safetensors: not a readable safetensors file" in capsys.readouterr().out
    aside = ckpt.with_name(ckpt.name + ".damaged")
    assert (aside / "model.safetensors").read_bytes() == data[: len(data) // 2]  # kept for inspection


@pytest.mark.parametrize("damage", ["truncate weights", "delete state", "garble state"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(data_dir, tmp_path, capsys, damage):
    full = pretrain(tiny_config(data_dir, tmp_path / "full", max_steps=9))
    run = tmp_path / "run"
    pretrain(tiny_config(data_dir, run, max_steps=6))  # checkpoints at steps 3 and 6
    newest = list_checkpoints(run)[-1]
    if damage == "truncate weights":
        (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:1000])
    elif damage == "delete state":
        (newest / "state.json").unlink()
    else:
        (newest / "state.json").write_text('{"step": 6, "tokens')
    resumed = pretrain(tiny_config(data_dir, run, max_steps=9), resume=True)
    out = capsys.readouterr().out
    assert "step-000006.damaged" in out and "resumed from" in out and "step-000003 (step 3)" in out
    assert (run / "checkpoints" / "step-000006.damaged").is_dir()
    assert resumed.state.step == 9
    a, b = final_weights(full.run_dir), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # as if the damaged steps had never happened


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: llama-tiny\nlr: 0.01\nmodel_overrides: {n_layers: 3}\n")
    cfg = build_config(path, lr=0.02, batch_size=None, model_overrides={"emb_dim": 32})
    assert (cfg.model, cfg.lr, cfg.batch_size) == ("llama-tiny", 0.02, 8)
    assert cfg.model_overrides == {"n_layers": 3, "emb_dim": 32}
    path.write_text("lrr: 1\n")
    with pytest.raises(ScratchLLMError, match="unknown field 'lrr'"):
        build_config(path)
    with pytest.raises(ScratchLLMError, match="batch_size"):
        PretrainConfig(batch_size=0)


def test_ddp_two_processes_match_one(data_dir, tmp_path):
    """torchrun with 2 CPU processes x batch 4 follows the same losses as 1 process x batch 8."""
    common = ["--model", "gpt-tiny", "--model-context-length", "32", "--data", str(VERDICT), "--vocab-size", "300",
              "--data-out", str(data_dir), "--max-steps", "4", "--dtype", "fp32", "--eval-every", "2",
              "--eval-batches", "2", "--log-every", "1", "--save-every", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [
        sys.executable,
        "-m",
        "scratchllm",
        "pretrain",
        *common,
        "--batch-size",
        "8",
        "--out-dir",
        str(tmp_path / "one"),
    ]
    subprocess.run(single, check=True, capture_output=True, env=env, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                "-m", "scratchllm", "pretrain", *common, "--batch-size", "4",
                "--out-dir", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(torchrun, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    def losses(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in lines if r["kind"] == "train"]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-4)
    assert len(list_checkpoints(tmp_path / "two")) == 2  # written once, by rank 0


def test_fsdp_two_processes_follow_one_and_resume(data_dir, tmp_path, capsys):
    """--strategy fsdp under torchrun (2 CPU processes on gloo, weights and AdamW state sharded): the same
    losses as 1 process, one checkpoint shard per process, and a resumed sharded run ends where an
    uninterrupted run does."""
    common = ["--model", "gpt-tiny", "--model-context-length", "32", "--data", str(VERDICT), "--vocab-size", "300",
              "--data-out", str(data_dir), "--dtype", "fp32", "--eval-every", "2", "--eval-batches", "2",
              "--log-every", "1", "--save-every", "2", "--sample-tokens", "4", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "scratchllm", "pretrain", *common, "--max-steps", "6", "--batch-size", "8",
              "--out-dir", str(tmp_path / "one")]  # fmt: skip
    subprocess.run(single, check=True, capture_output=True, env=env, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
                "-m", "scratchllm", "pretrain"]  # fmt: skip
    first = [*torchrun, *common, "--max-steps", "4", "--batch-size", "4", "--strategy", "fsdp",
             "--out-dir", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(first, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = list_checkpoints(tmp_path / "two")[-1]
    assert sorted(p.name for p in (checkpoint / "shards").iterdir()) == [
        "rank-000-of-002.safetensors", "rank-001-of-002.safetensors"]  # fmt: skip
    assert not (checkpoint / "model.safetensors").exists() and (tmp_path / "two" / "model.safetensors").exists()
    one_process = ["pretrain", "--resume", "--out-dir", str(tmp_path / "two"), "--max-steps", "6"]
    from scratchllm.cli.main import main

    assert main(one_process) == 2  # the shards need as many processes as wrote them
    assert "written by 2 processes with --strategy fsdp; resume with as many" in capsys.readouterr().err
    resumed = [*torchrun, "--resume", "--out-dir", str(tmp_path / "two"), "--max-steps", "6", "--no-progress"]
    done = subprocess.run(resumed, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and done.stdout.count("run folder") == 1

    def losses(run):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 7)) and [two[s] for s in sorted(two)] == pytest.approx(
        [one[s] for s in sorted(one)], abs=1e-4)  # fmt: skip
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_epoch_sampling_is_the_books_loader():
    import numpy as np

    from scratchllm.training.trainer import epoch_batch

    tokens = np.arange(1001)  # 1000 targets -> 10 windows of 100, batch 3 -> 3 batches per epoch (1 dropped)
    epoch0 = [epoch_batch(tokens, 3, 100, step, seed=1) for step in range(3)]
    starts = sorted(int(b[i, 0]) for b in epoch0 for i in range(3))
    assert len(set(starts)) == 9 and all(s % 100 == 0 for s in starts)  # distinct, non-overlapping windows
    assert all(torch.equal(b[:, 1:], b[:, :-1] + 1) for b in epoch0)  # targets shifted by one
    again = epoch_batch(tokens, 3, 100, 1, seed=1)
    assert torch.equal(again, epoch0[1])  # a function of the step: resuming needs no state
    assert not torch.equal(epoch_batch(tokens, 3, 100, 3, seed=1), epoch0[0])  # reshuffled next epoch


def test_compiled_training_matches_eager(data_dir, tmp_path):
    eager = pretrain(tiny_config(data_dir, tmp_path / "eager", max_steps=3))
    compiled = pretrain(tiny_config(data_dir, tmp_path / "compiled", max_steps=3, compile=True))
    a, b = final_weights(eager.run_dir), final_weights(compiled.run_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_compiled_bf16_training_with_tied_head_tracks_eager(data_dir, tmp_path):
    """The default model's setup: a tied head (sparse embedding gradient when eager) under bf16 autocast.

    bf16 rounding differs between the compiled and eager kernels and Adam amplifies tiny gradient
    differences, so the losses are compared, not the weights.
    """
    changes = dict(max_steps=6, dtype="bf16", model_overrides={"context_length": 32, "tie_embeddings": True})
    eager = pretrain(tiny_config(data_dir, tmp_path / "eager", **changes))
    compiled = pretrain(tiny_config(data_dir, tmp_path / "compiled", compile=True, **changes))
    for e, c in zip(eager.evals, compiled.evals, strict=True):
        assert abs(e["val_loss"] - c["val_loss"]) < 0.02 * e["val_loss"], (e, c)
    assert compiled.evals[-1]["train_loss"] < compiled.evals[0]["train_loss"]


def test_bf16_autocast_training_learns(data_dir, tmp_path):
    result = pretrain(tiny_config(data_dir, tmp_path / "bf16", dtype="bf16", max_steps=12, eval_every=12))
    first, last = result.evals[0], result.evals[-1]
    assert math.isfinite(last["train_loss"]) and last["train_loss"] < first["train_loss"] - 0.3


def test_cli_resume_reuses_the_run_config(data_dir, tmp_path, capsys):
    from scratchllm.cli.main import main

    out = tmp_path / "run"
    args = ["pretrain", "--model", "gpt-tiny", "--model-context-length", "32", "--data", str(VERDICT),
            "--vocab-size", "300", "--data-out", str(data_dir), "--out-dir", str(out), "--max-steps", "3",
            "--batch-size", "4", "--dtype", "fp32", "--eval-every", "3", "--save-every", "3",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    # Only the output folder and the new length: model, data and batch come from runs/.../config.yaml.
    assert main(["pretrain", "--resume", "--out-dir", str(out), "--max-steps", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "step 5" in text and "gpt-tiny" in text
    assert main(["pretrain", "--out-dir", str(out), "--max-steps", "6"]) == 2  # would overwrite: refused


def _reference_run(cfg: PretrainConfig) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The same run written out by hand from the spec: plain AdamW with decay on weight matrices only,
    global-norm clipping, linear warm-up then cosine decay, the config's init, sampling and seq_len."""
    from scratchllm.data.pipeline import options_from, prepare_data
    from scratchllm.models import Transformer, get_config
    from scratchllm.training.trainer import epoch_batch, sample_batch

    train = prepare_data(options_from(cfg), progress=False).train
    torch.manual_seed(cfg.seed)
    model = Transformer(get_config(cfg.model, **cfg.model_overrides, vocab_size=300))
    if cfg.init == "pytorch":
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.reset_parameters()
    named = dict(model.named_parameters())
    matrices = [n for n, p in named.items() if p.dim() == 2 and n not in ("tok_emb.weight", "pos_emb.weight")]
    assert len(matrices) == 4 * 2 + 1  # qkv, proj, fc1, fc2 per block, and the untied head
    groups = [{"params": [named[n] for n in matrices], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named.items() if n not in matrices], "weight_decay": 0.0}]  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sampler = torch.Generator().manual_seed(cfg.seed)
    seq, norms = cfg.seq_len or 32, []
    for step in range(cfg.max_steps):
        if step < cfg.warmup_steps:
            lr = cfg.lr * (step + 1) / cfg.warmup_steps
        else:
            progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
            lr = cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        if cfg.sampling == "epochs":
            batch = epoch_batch(train, cfg.batch_size, seq, step, cfg.seed)
        else:
            batch = sample_batch(train, cfg.batch_size, seq, sampler)
        logits = model(batch[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item())
        opt.step()
        opt.zero_grad()
    return {n: p.detach() for n, p in model.state_dict().items()}, norms


@pytest.mark.parametrize("sampling,seq_len,init", [("random", None, "gpt2"), ("epochs", 16, "pytorch")])
def test_training_equals_a_hand_written_loop(data_dir, tmp_path, sampling, seq_len, init):
    """Optimizer groups, clipping, the scheduled learning rate, init, sampling and seq_len < context all
    take effect: the run's weights equal a reference loop's after warm-up and decay steps."""
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=5, warmup_steps=2, lr=1e-2, min_lr=1e-3,
                      weight_decay=0.5, grad_clip=0.05, sampling=sampling, seq_len=seq_len, init=init,
                      eval_every=100, save_every=100)  # fmt: skip
    pretrain(cfg)
    expected, norms = _reference_run(cfg)
    assert min(norms) > 2 * cfg.grad_clip  # clipping binds at every step, so turning it off would show
    got = final_weights(tmp_path / "run")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=2e-5, rtol=1e-4, msg=name)


BOOK_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "verdict-book.yaml")


def test_book_config_needs_only_the_package(tmp_path, monkeypatch):
    """configs/verdict-book.yaml names the shipped story and GPT-2 vocabulary, so it runs from any folder
    (here an empty one, where a relative ../shared path would not resolve). A smaller model keeps it quick."""
    monkeypatch.chdir(tmp_path)
    cfg = build_config(BOOK_CONFIG, max_steps=2, eval_every=1, save_every=2, progress=False,
                       model_overrides={"n_layers": 1, "emb_dim": 48, "n_heads": 4})  # fmt: skip
    result = pretrain(cfg)
    from scratchllm.data.prepare import open_prepared

    prepared = open_prepared(tmp_path / "data" / "verdict-gpt2")
    assert prepared.meta.n_tokens == 5145 and prepared.meta.vocab_size == 50257  # the book's count
    assert prepared.tokens[:4].tolist() == [40, 367, 2885, 1464]  # "I HAD always thought"
    assert math.isfinite(result.evals[-1]["val_loss"]) and (tmp_path / "runs" / "verdict-book" / "loss.png").exists()


@pytest.mark.slow
def test_book_experiment_overfits_as_in_the_book(tmp_path, monkeypatch):
    """Chapter 5's run as configured (GPT-2 124M, 10 epochs of The Verdict, ~6 minutes on 2 cores): the
    training loss falls from ~11 to below 2 while the validation loss bottoms out near 6 and rises again."""
    monkeypatch.chdir(tmp_path)
    result = pretrain(build_config(BOOK_CONFIG, progress=False))
    train = [e["train_loss"] for e in result.evals]
    val = [e["val_loss"] for e in result.evals]
    assert train[0] > 10 and train[-1] < 2.0
    assert 5.5 < min(val) < 7.0 and val[-1] > min(val)


def test_a_plot_that_cannot_be_drawn_is_announced(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    pretrain(tiny_config(data_dir, tmp_path / "run", max_steps=1, eval_every=1, save_every=1))
    out = capsys.readouterr().out
    assert "loss.png not written (matplotlib is not installed" in out
    assert not (tmp_path / "run" / "loss.png").exists() and (tmp_path / "run" / "model.safetensors").exists()


def test_max_steps_on_the_command_line_replaces_the_default_epochs(tmp_path):
    """Fine-tuning defaults to epochs; `--max-steps N` used to be overridden by them silently."""
    from scratchllm.training.config import ClassifyConfig, InstructConfig

    assert build_config(None, InstructConfig).epochs == 2
    cfg = build_config(None, InstructConfig, max_steps=7)
    assert (cfg.epochs, cfg.max_steps) == (None, 7)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\nlr: 0.001\n")
    cfg = build_config(recipe, ClassifyConfig, max_steps=9)  # the flag wins over the file's epochs
    assert (cfg.epochs, cfg.max_steps, cfg.lr) == (None, 9, 0.001)
    assert build_config(recipe, ClassifyConfig).epochs == 3
    with pytest.raises(ScratchLLMError, match="--epochs or --max-steps, not both"):
        build_config(None, InstructConfig, max_steps=7, epochs=1)
