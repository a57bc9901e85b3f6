"""Hardware peaks and dtype choice: MFU never above 100%, one measured warning for emulated bf16."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm import hardware


@pytest.fixture
def fresh_peaks(monkeypatch):
    """A private peak table, so raising a peak here does not change other tests' MFU figures."""
    monkeypatch.setattr(hardware, "_PEAKS", {})
    return hardware._PEAKS


def test_peak_is_measured_once_and_raised_by_a_faster_rate(fresh_peaks):
    peak = hardware.matmul_peak(torch.float32)
    assert peak > 1e8  # any CPU this runs on does more than 0.1 GFLOP/s
    assert hardware.matmul_peak(torch.float32) == peak  # cached: measured once per process
    assert hardware.utilisation(peak / 2) == pytest.approx(0.5)
    assert hardware.utilisation(3 * peak) == 1.0  # an achieved rate above the peak becomes the peak
    assert hardware.matmul_peak(torch.float32) == 3 * peak
    assert hardware.utilisation(1.5 * peak) == pytest.approx(0.5)


def test_pretrain_never_reports_mfu_above_one(tmp_path, fresh_peaks):
    """Even against a peak that read absurdly low (1 kFLOP/s), the run's MFU stays in (0, 1]."""
    from scratchllm.training.config import PretrainConfig
    from scratchllm.training.trainer import pretrain

    from .conftest import VERDICT

    fresh_peaks[(torch.float32, "cpu")] = 1e3
    cfg = PretrainConfig(model="gpt-tiny", model_overrides={"context_length": 32}, data=str(VERDICT), vocab_size=300,
                         data_out=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), max_steps=4, batch_size=2,
                         dtype="fp32", eval_every=4, eval_batches=1, sample_every=4, sample_tokens=2, log_every=1,
                         save_every=4, progress=False)  # fmt: skip
    pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mfus = [r["mfu"] for r in records if r["kind"] == "train"]
    assert len(mfus) == 4 and all(0 < m <= 1 for m in mfus) and mfus[0] == 1.0
    assert fresh_peaks[(torch.float32, "cpu")] > 1e3


def test_bf16_on_an_emulating_cpu_warns_once_and_auto_picks_fp32(monkeypatch, capsys, fresh_peaks):
    # oneDNN capped below AVX512-BF16 emulates bf16 products, as a CPU with AVX2 only does.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(hardware, "_warned_emulated", False)
    assert not hardware.cpu_has_bf16()
    assert hardware.resolve_dtype("auto") == torch.float32
    assert hardware.resolve_dtype("bf16") == torch.bfloat16  # still honoured
    assert hardware.resolve_dtype("bf16") == torch.bfloat16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bf16 matrix products are emulated at" in err[0] and "slower than fp32" in err[0]
    assert "AVX2, bf16 emulated" in hardware.cpu_description()


def test_native_bf16_does_not_warn(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(hardware, "_warned_emulated", False)
    assert hardware.resolve_dtype("bf16") == torch.bfloat16 and hardware.resolve_dtype("auto") == torch.bfloat16
    assert capsys.readouterr().err == ""


def test_unknown_dtype_is_a_clear_error():
    from scratchllm.errors import ScratchLLMError

    with pytest.raises(ScratchLLMError, match="expected auto, fp32 or bf16"):
        hardware.resolve_dtype("int4")


def test_every_verb_that_runs_a_model_takes_device():
    """`--device` on every verb that runs a model (training verbs through their config's `device` field)."""
    from scratchllm.cli.main import build_parser

    parser = build_parser()
    verbs = {"generate": [], "chat": [], "bench": [], "serve": [], "classify": ["x"], "respond": [],
             "pretrain": [], "finetune classify": [], "finetune instruct": [], "finetune dpo": [],
             "evaluate perplexity": []}  # fmt: skip
    for verb, rest in verbs.items():
        required = {"generate": ["--checkpoint", "c", "--prompt", "p"], "respond": ["--checkpoint", "c", "--data", "d"],
                    "classify": ["--checkpoint", "c"], "evaluate perplexity": ["--checkpoint", "c", "--data", "d"]}
        args = parser.parse_args([*verb.split(), *required.get(verb, ["--checkpoint", "c"] if verb in
                                  ("chat", "bench", "serve") else []), "--device", "cpu", *rest])  # fmt: skip
        assert args.device == "cpu", verb


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_a_missing_gpu_is_a_clear_error(tmp_path):
    from scratchllm.errors import ScratchLLMError
    from scratchllm.training.config import PretrainConfig
    from scratchllm.training.distributed import init_distributed

    with pytest.raises(ScratchLLMError, match="no CUDA GPU"):
        init_distributed("cuda")
    with pytest.raises(ScratchLLMError, match="'device' must be auto, cpu, cuda or cuda:N"):
        PretrainConfig(device="gpu")
    from scratchllm.cli.main import main

    assert main(["generate", "--checkpoint", "gpt-tiny", "--prompt", "x", "--device", "cuda"]) == 2
