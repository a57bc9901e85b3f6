"""GPT-2's own pieces (book ch. 4): LayerNorm, GELU, the feed-forward block, and the GPT-2 presets.

The transformer skeleton they plug into is shared with Llama (`transformer.py`). These are the
production modules: they call PyTorch's fused kernels (`F.layer_norm`, `F.gelu(approximate="tanh")`),
which compute the book's formulas (biased variance, eps 1e-5; the tanh approximation of GELU) in one pass.
The step-by-step versions of the formulas live in `book_gpt.py` for reading, and tests hold both equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig, register


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


def _gpt2(name: str, emb_dim: int, n_layers: int, n_heads: int) -> ModelConfig:
    # OpenAI's released GPT-2 weights use qkv biases and tie the output head to the token embedding.
    return register(
        ModelConfig(name=name, arch="gpt2", vocab_size=50257, context_length=1024, emb_dim=emb_dim,
                    n_heads=n_heads, n_layers=n_layers, drop_rate=0.0, qkv_bias=True, tie_embeddings=True)
    )  # fmt: skip


GPT2_SMALL = _gpt2("gpt2-small", 768, 12, 12)
GPT2_MEDIUM = _gpt2("gpt2-medium", 1024, 24, 16)
GPT2_LARGE = _gpt2("gpt2-large", 1280, 36, 20)
GPT2_XL = _gpt2("gpt2-xl", 1600, 48, 25)
# The book's GPT_CONFIG_124M: no qkv bias, dropout 0.1, untied head (163,009,536 parameters).
register(GPT2_SMALL.replace(name="gpt2-124m-book", qkv_bias=False, drop_rate=0.1, tie_embeddings=False))
# Small models that train on a 2-core CPU in minutes; gpt-demo is the default run's model.
register(ModelConfig(name="gpt-demo", arch="gpt2", vocab_size=8192, context_length=256, emb_dim=256,
                     n_heads=8, n_layers=6, drop_rate=0.0, tie_embeddings=True))  # fmt: skip
register(ModelConfig(name="gpt-tiny", arch="gpt2", vocab_size=512, context_length=64, emb_dim=64,
                     n_heads=4, n_layers=2, qkv_bias=True))  # fmt: skip
