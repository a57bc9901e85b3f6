"""Gemma's own pieces: RMSNorm scaled by (1 + weight) and the GeGLU feed-forward.

The rest of Gemma 3 is config on the shared transformer: sandwich norms (`norm_placement: sandwich`), QK-norm,
embeddings scaled by sqrt(emb_dim), sliding-window layers with their own RoPE base, a tied head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.llama import SwiGLUFeedForward


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose scale is (1 + weight), the weight starting at zero, applied in float32 before the cast back
    (Gemma's order: the product is rounded once, where Llama's rounds the normalised value first)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.rms_norm(x.float(), self.weight.shape, None, self.eps) * (1.0 + self.weight.float())).to(x.dtype)


class GeGLUFeedForward(SwiGLUFeedForward):
    """`down(gelu_tanh(gate(x)) * up(x))`: SwiGLU's gated MLP with a GELU gate (Shazeer 2020)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))
