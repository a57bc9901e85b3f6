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
  gpt-fast), so decoding never re-concatenates tensors; attention reads the filled prefix only. It is an
  object passed to the forward, not module state: each generation owns its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig
from scratchllm.models.llama import RMSNorm
from scratchllm.models.rope import apply_rope

# Scores (batch x heads x T x T) per layer up to which CPU bf16 training uses explicit attention: 8M
# elements keep what backward saves (float32 softmax + bf16 copy) at <= 48 MB per layer; GPT-2 small at
# 2 x 256 tokens needs 1.5M.
EXPLICIT_ATTENTION_MAX_LEN = 512
EXPLICIT_ATTENTION_MAX_SCORES = 1 << 23


class KVCache:
    """Keys and values of past positions for every layer of a pool of sequences (rows).

    Each layer holds k and v of shape (rows, n_kv_heads, max_len, head_dim), preallocated and written in
    place. The cache belongs to whoever generates (the engine gives every request a row of one pool) and is
    passed to the forward: modules keep no inference state, so two generations never share one by accident.
    `select` gives a cache over a range of rows that shares the storage (a prefill writes one row of the pool).
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]):
        self.k, self.v = k, v

    @classmethod
    def allocate(cls, config: ModelConfig, rows: int, max_len: int, dtype, device=None) -> KVCache:
        shape = (rows, config.n_kv_heads, max_len, config.head_dim)
        zeros = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return cls([zeros() for _ in range(config.n_layers)], [zeros() for _ in range(config.n_layers)])

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def select(self, first: int, end: int) -> KVCache:
        return KVCache([k[first:end] for k in self.k], [v[first:end] for v in self.v])

    def copy_row(self, src: int, dst: int, n_slots: int) -> None:
        """Move a sequence's first `n_slots` keys/values to another row (the engine keeps live rows contiguous)."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :n_slots] = k[src, :, :n_slots]
            v[dst, :, :n_slots] = v[src, :, :n_slots]

    def update(
        self, layer: int, slots: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_keys: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, T, head_dim) and return the layer's slots [0, n_keys).

        `slots` is the first slot of a run of T (every row alike: prefill) or, for one token, a (batch,)
        tensor of each row's own slot (rows of different lengths decoding together).
        """
        if n_keys > self.max_len:
            from scratchllm.errors import ScratchLLMError

            raise ScratchLLMError(f"KV cache is full: position {n_keys} exceeds its {self.max_len} slots")
        k_cache, v_cache = self.k[layer], self.v[layer]
        batch = k.shape[0]
        if isinstance(slots, torch.Tensor):
            rows = torch.arange(batch, device=k.device)
            k_cache[rows, :, slots] = k[:, :, 0]
            v_cache[rows, :, slots] = v[:, :, 0]
        else:
            k_cache[:batch, :, slots : slots + k.shape[2]] = k
            v_cache[:batch, :, slots : slots + k.shape[2]] = v
        return k_cache[:batch, :, :n_keys], v_cache[:batch, :, :n_keys]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV, optional RoPE, GQA and an optional KV cache."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # this layer's index into a KVCache
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.qkv = nn.Linear(config.emb_dim, q_dim + 2 * kv_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(q_dim, config.emb_dim, bias=config.bias)
        self.drop_rate = config.drop_rate
        # QK-norm (Qwen3): each head's query and key RMS-normalised before RoPE, bounding the attention logits.
        self.q_norm = self.k_norm = None
        if config.qk_norm == "head":
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        slots: int | torch.Tensor = 0,
        n_keys: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (batch, T, emb_dim). With a cache, write keys/values at `slots` and attend slots [0, n_keys).

        `mask` (bool, True = may attend, broadcastable to (batch, heads, T, keys)) replaces the causal
        rule when given; without it, attention is causal over the keys in view.
        """
        batch, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(batch, T, self.n_heads, self.head_dim)
        k = k.view(batch, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, slots, k, v, n_keys)
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
