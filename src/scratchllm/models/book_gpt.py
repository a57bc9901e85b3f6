"""The book's plain GPT model (ch. 4), every formula written out: the readable reference.

LayerNorm computes mean and biased variance by hand; GELU is the tanh approximation written as a formula;
attention is `book_attention.MultiHeadAttention` with an explicit mask. The production `Transformer`
computes the same function with fused kernels; `copy_into_book_model` transfers its weights here so tests
can hold the two equal and benchmarks can time "the book's code" against ours on identical weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchllm.models.book_attention import MultiHeadAttention
from scratchllm.models.config import ModelConfig


class BookLayerNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class BookFeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), BookGELU(),
                                    nn.Linear(4 * cfg.emb_dim, cfg.emb_dim))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BookTransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.att = MultiHeadAttention(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads,
                                      cfg.qkv_bias)  # fmt: skip
        self.ff = BookFeedForward(cfg)
        self.norm1, self.norm2 = BookLayerNorm(cfg.emb_dim), BookLayerNorm(cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class BookGPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if (cfg.norm, cfg.mlp, cfg.positions) != ("layernorm", "gelu", "learned"):
            raise ValueError("the book's GPTModel is the GPT-2 architecture")
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[BookTransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = BookLayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        _, T = in_idx.shape
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(T, device=in_idx.device))
        x = self.trf_blocks(self.drop_emb(x))
        return self.out_head(self.final_norm(x))


@torch.no_grad()
def copy_into_book_model(ours: nn.Module, book: BookGPTModel) -> BookGPTModel:
    """Copy a GPT-2-architecture `Transformer`'s weights into the book's model (fused qkv split in three)."""
    d = ours.config.emb_dim
    book.tok_emb.weight.copy_(ours.tok_emb.weight)
    book.pos_emb.weight.copy_(ours.pos_emb.weight)
    for src, dst in zip(ours.blocks, book.trf_blocks):
        for name, w in zip(("W_query", "W_key", "W_value"), src.attn.qkv.weight.split(d)):
            getattr(dst.att, name).weight.copy_(w)
        if src.attn.qkv.bias is not None:
            for name, b in zip(("W_query", "W_key", "W_value"), src.attn.qkv.bias.split(d)):
                getattr(dst.att, name).bias.copy_(b)
        dst.att.out_proj.weight.copy_(src.attn.proj.weight)
        dst.att.out_proj.bias.copy_(src.attn.proj.bias)
        for s, t in ((src.norm1, dst.norm1), (src.norm2, dst.norm2)):
            t.scale.copy_(s.weight)
            t.shift.copy_(s.bias)
        dst.ff.layers[0].weight.copy_(src.ff.fc1.weight)
        dst.ff.layers[0].bias.copy_(src.ff.fc1.bias)
        dst.ff.layers[2].weight.copy_(src.ff.fc2.weight)
        dst.ff.layers[2].bias.copy_(src.ff.fc2.bias)
    book.final_norm.scale.copy_(ours.final_norm.weight)
    book.final_norm.shift.copy_(ours.final_norm.bias)
    book.out_head.weight.copy_(ours.out_head.weight)
    return book
