"""Analytic model sizes against instantiated models and the book's figures; the `info` verb."""

from __future__ import annotations

import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.models import build_model, get_config
from scratchllm.models.stats import model_stats


@pytest.mark.parametrize(
    "preset,overrides",
    [("gpt-tiny", {}), ("gpt-tiny", {"qkv_bias": False, "tie_embeddings": True}), ("llama-tiny", {}),
     ("llama-tiny", {"tie_embeddings": True, "n_kv_heads": 1}), ("gpt-demo", {}), ("llama-demo", {})],
)  # fmt: skip
def test_param_count_matches_instantiated_model(preset, overrides):
    config = get_config(preset, **overrides)
    model = build_model(config)
    stats = model_stats(config)
    assert stats.params == model.num_parameters()
    assert stats.params_untied == model.num_parameters(count_tied_head=True)
    tied = build_model(config.replace(tie_embeddings=True))
    assert stats.params_tied == tied.num_parameters()


def test_book_figures():
    s = model_stats(get_config("gpt2-124m-book"))
    assert s.params == 163_009_536
    assert s.params_tied == 124_412_160  # the book's second figure: the head shares the token embedding
    assert round(s.memory_bytes(4) / 2**20, 2) == 621.83
    assert model_stats(get_config("llama3-8b")).params == 8_030_261_248


def test_forward_flops_match_profiler():
    """Matrix-product FLOPs counted by torch's FLOP counter agree with the formula."""
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config("llama-tiny")
    model = build_model(config).eval()
    T = config.context_length
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, T, dtype=torch.long))
    # The counter does not see inside the CPU attention kernel, so compare the weight products.
    assert counter.get_total_flops() == model_stats(config, T).matmul_flops_per_token * T


def test_info_cli(capsys):
    assert main(["info", "gpt2-124m-book"]) == 0
    out = capsys.readouterr().out
    assert "163,009,536" in out and "621.83 MiB" in out
    assert "tied head      124,412,160" in out and "untied head    163,009,536  <- this model" in out
    assert main(["info"]) == 0
    assert "llama3.2-1b" in capsys.readouterr().out
    assert main(["info", "nonexistent-model"]) == 2


def test_components_mix_and_match():
    """Components are config fields: a GPT-2 skeleton with RMSNorm, SwiGLU and RoPE builds, trains a step,
    and its analytic parameter count holds; transformers' GPT-2 class cannot hold it, so export refuses."""
    from scratchllm.checkpoints.hf import config_to_hf
    from scratchllm.errors import ScratchLLMError

    config = get_config("gpt-tiny", norm="rmsnorm", mlp="swiglu", positions="rope", hidden_dim=96)
    model = build_model(config)
    assert model.pos_emb is None and type(model.blocks[0].ff).__name__ == "SwiGLUFeedForward"
    assert model_stats(config).params == model.num_parameters()
    model(torch.randint(0, 512, (2, 8))).sum().backward()
    with pytest.raises(ScratchLLMError, match="mixes components"):
        config_to_hf(config)
    with pytest.raises(ScratchLLMError, match="field 'norm' is 'batchnorm'"):
        get_config("gpt-tiny", norm="batchnorm")
    assert get_config("gpt-tiny").replace(arch="llama").norm == "rmsnorm"  # derived components follow arch


def test_configs_and_presets_load_without_the_model_code():
    import subprocess
    import sys

    modules = "('torch', 'scratchllm.models.gpt2', 'scratchllm.models.llama')"
    probe = ("import sys; from scratchllm.models.config import get_config; get_config('llama3.2-1b'); "
             f"print(sorted(m for m in {modules} if m in sys.modules))")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
