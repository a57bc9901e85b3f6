"""Production causal self-attention shared by GPT-2 and Llama, and its KV cache.

Decisions (the readable step-by-step versions are in `book_attention.py`, and tests hold both equal):
- One fused QKV projection: a single matrix product instead of three, split afterwards. With grouped-query
  attention the split is uneven: n_heads query heads, n_kv_heads key and value heads.
- Grouped-query attention (GQA): several query heads share one key/value head. n_kv_heads = n_heads is
  ordinary multi-head attention, n_kv_heads = 1 is multi-query. Keys/values are never stored repeated,
  so the KV cache is n_heads/n_kv_heads times smaller; SDPA's `enable_gqa` (training, prefill) or folding
  a group's queries together (one-token decode, explicit attention) avoids repeating them at all, and only
  a masked multi-token product repeats them, for that product alone.
- `F.scaled_dot_product_attention` does scale, mask, softmax, dropout and the weighted sum in one fused
  kernel (flash/memory-efficient where available), with `is_causal=True` for training so no mask tensor is
  built at all. One exception, measured with torch 2.13 on a 2-core CPU: for bf16/fp16 training of short
  sequences, the CPU flash kernel's forward + backward is 1.1-2x slower than autograd through three plain
  batched products (scores, softmax, weighted sum), so `explicit_causal_attention` is used there; its
  (T x T) score matrices stay small under `EXPLICIT_ATTENTION_MAX_SCORES`. In float32, forward-only, and
  on GPUs the fused kernels are as fast or faster, so everything else goes through SDPA.
- The KV cache is preallocated to its maximum length and written in place at the given slot (as in
  gpt-fast), so decoding never re-concatenates tensors; attention reads the filled prefix only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig
from scratchllm.models.rope import apply_rope

# Scores (batch x heads x T x T) per layer up to which CPU bf16 training uses explicit attention: 8M
# elements keep what backward saves (float32 softmax + bf16 copy) at <= 48 MB per layer; GPT-2 small at
# 2 x 256 tokens needs 1.5M.
EXPLICIT_ATTENTION_MAX_LEN = 512
EXPLICIT_ATTENTION_MAX_SCORES = 1 << 23


class KVCache(nn.Module):
    """Keys and values of past positions for one layer: (batch, n_kv_heads, max_len, head_dim) each."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, T, head_dim) at slots [start, start+T); return slots [0, start+T)."""
        end = start + k.shape[2]
        if end > self.max_len:
            from scratchllm.errors import ScratchLLMError

            raise ScratchLLMError(f"KV cache is full: position {end} exceeds its {self.max_len} slots")
        batch = k.shape[0]
        self.k[:batch, :, start:end] = k
        self.v[:batch, :, start:end] = v
        return self.k[:batch, :, :end], self.v[:batch, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV, optional RoPE, GQA and an optional KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.qkv = nn.Linear(config.emb_dim, q_dim + 2 * kv_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(q_dim, config.emb_dim, bias=config.bias)
        self.drop_rate = config.drop_rate
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (batch, T, emb_dim). With `start`, read/write the KV cache at slots [start, start+T).

        `mask` (bool, True = may attend, broadcastable to (batch, heads, T, keys)) replaces the causal
        rule when given; without it, attention is causal over the keys in view.
        """
        batch, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(batch, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if start is not None and self.kv_cache is not None:
            k, v = self.kv_cache.update(start, k, v)
        # Causal without a mask tensor when queries and keys cover the same positions; one new token
        # after a cache sees every key in view, which needs no mask either.
        is_causal = bool(mask is None and T > 1 and k.shape[2] == T)  # bool(): a plain flag under torch.compile
        if mask is None and not is_causal and T > 1:
            mask = causal_mask(T, k.shape[2], k.shape[2] - T, x.device)
        groups = self.n_heads // self.n_kv_heads
        dropout = self.drop_rate if self.training else 0.0
        if groups > 1 and T == 1:
            # Decoding with GQA: fold each group's query heads into the query axis of their shared
            # key/value head, so keys and values are read once and never repeated.
            q = q.reshape(batch, self.n_kv_heads, groups, self.head_dim)
            if mask is not None:
                mask = mask.expand(batch, 1, groups, k.shape[2])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            y = y.reshape(batch, self.n_heads, 1, self.head_dim)
        elif groups > 1 and mask is not None:
            # Each key/value head repeated for its group of query heads (a copy, for this product only).
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif is_causal and _explicit_pays_off(q):
            y = explicit_causal_attention(q, k, v, dropout)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout, enable_gqa=groups > 1
            )
        return self.proj(y.transpose(1, 2).reshape(batch, T, q_dim))


def _explicit_pays_off(q: torch.Tensor) -> bool:
    batch, heads, T, _ = q.shape
    return (
        q.device.type == "cpu"
        and q.requires_grad
        and q.dtype in (torch.bfloat16, torch.float16)
        and T <= EXPLICIT_ATTENTION_MAX_LEN
        and batch * heads * T * T <= EXPLICIT_ATTENTION_MAX_SCORES
    )


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention as scores -> softmax -> weighted sum, for q (batch, heads, T, d), k/v (batch, kv_heads, T, d).

    With grouped-query attention each key/value head's group of query heads is folded into its query axis
    (groups * T rows), so keys and values are never repeated. The causal mask is an additive -inf bias
    applied by the scores' product itself (`baddbmm`).
    """
    batch, n_heads, T, head_dim = q.shape
    n_kv = k.shape[1]
    groups = n_heads // n_kv
    q = q.reshape(batch * n_kv, groups * T, head_dim)
    k, v = k.reshape(batch * n_kv, T, head_dim), v.reshape(batch * n_kv, T, head_dim)
    # Scores and softmax in float32 even for bf16/fp16 inputs, as the fused kernels keep them: rounding the
    # scores to bf16 first raised the output error 1.6x (measured against float64) for a ~10% speed gain.
    future = ~causal_mask(T, T, 0, q.device)
    bias = torch.zeros(T, T, device=q.device).masked_fill_(future, float("-inf")).repeat(groups, 1)
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.baddbmm(bias, q.float(), k.float().transpose(1, 2), alpha=head_dim**-0.5)
        weights = torch.softmax(scores, dim=-1).to(v.dtype)
        if dropout > 0:
            weights = F.dropout(weights, dropout)
        return torch.bmm(weights, v).view(batch, n_heads, T, head_dim)


def causal_mask(n_queries: int, n_keys: int, offset: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) bool: query i (at absolute slot offset+i) may attend keys at slots <= offset+i."""
    q_slots = torch.arange(offset, offset + n_queries, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= q_slots
