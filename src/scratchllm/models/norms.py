"""The one place a config's `norm` becomes a module: LayerNorm (GPT-2), RMSNorm (Llama), (1 + w) RMSNorm (Gemma)."""

from __future__ import annotations

from torch import nn

from scratchllm.models.config import ModelConfig
from scratchllm.models.gemma import OffsetRMSNorm
from scratchllm.models.gpt2 import LayerNorm
from scratchllm.models.llama import RMSNorm


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The config's norm over `dim` features (default: emb_dim)."""
    dim = dim or config.emb_dim
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    if config.norm == "rmsnorm_offset":
        return OffsetRMSNorm(dim, config.norm_eps)
    return LayerNorm(dim, config.norm_eps, bias=config.bias)
