"""GPT-2's own pieces (book ch. 4): LayerNorm, GELU and the feed-forward block (presets: `families/gpt2.py`).

The transformer skeleton they plug into is shared with Llama (`transformer.py`). These are the
production modules: they call PyTorch's fused kernels (`F.layer_norm`, `F.gelu(approximate="tanh")`),
which compute the book's formulas (biased variance, eps 1e-5; the tanh approximation of GELU) in one pass.
The step-by-step versions of the formulas live in `book_gpt.py` for reading, and tests hold both equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig


class LayerNorm(nn.Module):
    """Normalise each position to zero mean, unit (biased) variance, then learnable scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # the book's `scale`
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None  # the book's `shift`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """GPT-2's position-wise MLP: expand to `hidden_dim` (4x), GELU (tanh approximation), project back."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.emb_dim, config.hidden_dim, bias=config.bias)
        self.fc2 = nn.Linear(config.hidden_dim, config.emb_dim, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
