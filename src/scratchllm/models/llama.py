"""Llama's own pieces: RMSNorm and the SwiGLU feed-forward (the presets are in `families/llama.py`).

Rotary position embeddings are in `rope.py` and grouped-query attention in `attention.py`, because the
shared attention module uses them; the transformer skeleton is shared with GPT-2 (`transformer.py`).
Llama has no biases anywhere, so these modules have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig


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
