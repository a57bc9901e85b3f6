"""Llama's own pieces: RMSNorm, the SwiGLU feed-forward, and the Llama 2 / 3 / 3.1 / 3.2 presets.

Rotary position embeddings are in `rope.py` and grouped-query attention in `attention.py`, because the
shared attention module uses them; the transformer skeleton is shared with GPT-2 (`transformer.py`).
Llama has no biases anywhere, so these modules have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig, register


class RMSNorm(nn.Module):
    """Scale each position by the reciprocal root-mean-square of its features (no mean, no shift).

    Computed in float32 and cast back, as Meta and HF do, so bf16 activations keep their precision.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype) * self.weight


class SwiGLUFeedForward(nn.Module):
    """`down(silu(gate(x)) * up(x))`: a gated MLP (Shazeer 2020) with `hidden_dim` units."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.emb_dim, config.hidden_dim, bias=False)
        self.up = nn.Linear(config.emb_dim, config.hidden_dim, bias=False)
        self.down = nn.Linear(config.hidden_dim, config.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _llama(name: str, **fields) -> ModelConfig:
    return register(ModelConfig(name=name, arch="llama", **fields))


# Llama 3 models share the 128k tiktoken vocabulary, 8 key/value heads and RoPE base 500,000; 3.1 and 3.2
# stretch the 8k pretraining context to 128k by RoPE frequency scaling (factor 8 for 8B, 32 for 1B/3B).
_LLAMA3 = {"vocab_size": 128256, "n_kv_heads": 8, "rope_base": 500000.0}
_LONG = {"context_length": 131072}


def _scaling(factor: float) -> dict:
    return {"rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_context_length": 8192}}  # fmt: skip


# fmt: off
_llama("llama2-7b", vocab_size=32000, context_length=4096, emb_dim=4096, n_heads=32, n_layers=32, hidden_dim=11008)
_llama("llama3-8b", **_LLAMA3, context_length=8192, emb_dim=4096, n_heads=32, n_layers=32, hidden_dim=14336)
_llama("llama3.1-8b", **_LLAMA3, **_LONG, **_scaling(8.0), emb_dim=4096, n_heads=32, n_layers=32, hidden_dim=14336)
_llama("llama3.2-1b", **_LLAMA3, **_LONG, **_scaling(32.0), emb_dim=2048, n_heads=32, n_layers=16, hidden_dim=8192,
       tie_embeddings=True)
_llama("llama3.2-3b", **_LLAMA3, **_LONG, **_scaling(32.0), emb_dim=3072, n_heads=24, n_layers=28, hidden_dim=8192,
       tie_embeddings=True)
# Small models that train on a 2-core CPU; llama-tiny is for tests.
_llama("llama-demo", vocab_size=8192, context_length=256, emb_dim=256, n_heads=8, n_kv_heads=2, n_layers=6,
       hidden_dim=688, tie_embeddings=True)
_llama("llama-tiny", vocab_size=512, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2,
       hidden_dim=176)
# fmt: on
