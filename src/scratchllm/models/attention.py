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
from scratchllm.models.norms import make_norm
from scratchllm.models.rope import apply_rope

# Scores (batch x heads x T x T) per layer up to which CPU bf16 training uses explicit attention: 8M
# elements keep what backward saves (float32 softmax + bf16 copy) at <= 48 MB per layer; GPT-2 small at
# 2 x 256 tokens needs 1.5M.
EXPLICIT_ATTENTION_MAX_LEN = 512
EXPLICIT_ATTENTION_MAX_SCORES = 1 << 23


class KVCache:
    """Keys and values of past positions for every layer of a pool of sequences (rows).

    Each layer holds k and v of shape (rows, n_kv_heads, slots, head_dim), preallocated and written in place.
    A global layer has `max_len` slots, position p in slot p. A sliding-window (local) layer has only as many
    slots as its window, used as a ring: position p lives in slot p % window, overwriting the position one
    window earlier, which no later query may see anyway; so a local layer's memory is bounded by its window
    whatever the sequence length (Gemma 3's 5 of 6 layers at 512 slots instead of 32k).
    The cache belongs to whoever generates (the engine gives every request a row of one pool) and is passed
    to the forward: modules keep no inference state, so two generations never share one by accident.
    `select` gives a cache over a range of rows that shares the storage (a prefill writes one row of the pool).
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], max_len: int, local: list[bool]):
        self.k, self.v, self.max_len, self.local = k, v, max_len, local

    @classmethod
    def allocate(cls, config: ModelConfig, rows: int, max_len: int, dtype, device=None) -> KVCache:
        windows = [config.window(i) for i in range(config.n_layers)]
        shapes = [(rows, config.n_kv_heads, max_len if w is None else min(w, max_len), config.head_dim)
                  for w in windows]  # fmt: skip
        zeros = lambda shape: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return cls([zeros(s) for s in shapes], [zeros(s) for s in shapes], max_len, [w is not None for w in windows])

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    def select(self, first: int, end: int) -> KVCache:
        return KVCache([k[first:end] for k in self.k], [v[first:end] for v in self.v], self.max_len, self.local)

    def copy_row(self, src: int, dst: int, n_slots: int) -> None:
        """Move a sequence's first `n_slots` keys/values to another row (the engine keeps live rows contiguous);
        a local layer's whole ring moves, since its slots are not in position order."""
        for k, v, local in zip(self.k, self.v, self.local):
            n = k.shape[2] if local else n_slots
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]

    def update(
        self, layer: int, slots: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_keys: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, T, head_dim) of a global layer and return its slots [0, n_keys).

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

    def update_window(
        self, layer: int, slots: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v of a local layer in its ring; return the keys, values and the mask its queries attend with.

        A run of T tokens from position `slots` (prefill, possibly a later chunk) attends the ring as it was (the
        window before the run, read before the run overwrites it) followed by the run itself, masked to each
        query's window; one token per row (a (batch,) tensor of positions) attends the ring after its write, the
        mask saying which ring slots hold a position in its window (and allowed by `key_mask`, (batch, n_keys)).
        """
        k_ring, v_ring = self.k[layer], self.v[layer]
        size, (batch, _, T, _), device = k_ring.shape[2], k.shape, k.device
        if T == 1 and not isinstance(slots, torch.Tensor):
            slots = torch.full((batch,), slots, device=device)
        if isinstance(slots, torch.Tensor):
            rows = torch.arange(batch, device=device)
            k_ring[rows, :, slots % size] = k[:, :, 0]
            v_ring[rows, :, slots % size] = v[:, :, 0]
            # the position each ring slot holds now: the latest p <= position with p = slot (mod size)
            held = slots[:, None] - (slots[:, None] - torch.arange(size, device=device)) % size
            valid = held >= 0
            if key_mask is not None:
                valid &= key_mask.gather(1, held.clamp(min=0, max=key_mask.shape[1] - 1))
            return k_ring[:batch], v_ring[:batch], valid[:, None, None, :]
        past = torch.arange(slots - size, slots, device=device)  # positions the ring may hold before the run
        keys = torch.cat([past, torch.arange(slots, slots + T, device=device)])
        k_all = torch.cat([k_ring[:batch, :, past % size], k], dim=2)
        v_all = torch.cat([v_ring[:batch, :, past % size], v], dim=2)
        queries = torch.arange(slots, slots + T, device=device)[:, None]
        mask = (keys >= 0) & (keys <= queries) & (keys > queries - size)
        n = min(T, size)  # the run's last `size` tokens are what the ring keeps
        kept = torch.arange(slots + T - n, slots + T, device=device) % size
        k_ring[:batch, :, kept] = k[:, :, T - n :]
        v_ring[:batch, :, kept] = v[:, :, T - n :]
        return k_all, v_all, mask


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
        self.scale = config.attn_scale  # None: SDPA's 1 / sqrt(head_dim)
        self.window = config.window(layer)  # None: a global layer
        # QK-norm: queries and keys normalised before RoPE, bounding the attention logits; per head (Qwen3,
        # Gemma 3) or over all heads' features at once (Olmo).
        self.q_norm = self.k_norm = None
        self.qk_norm_full = config.qk_norm == "full"
        if config.qk_norm != "none":
            self.q_norm = make_norm(config, q_dim if self.qk_norm_full else config.head_dim)
            self.k_norm = make_norm(config, kv_dim if self.qk_norm_full else config.head_dim)

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
        if self.q_norm is not None and self.qk_norm_full:  # over all heads' features (Olmo)
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, T, self.n_heads, self.head_dim)
        k = k.view(batch, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and not self.qk_norm_full:  # per head
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.window is not None:
            if cache is None:  # the whole sequence: a band of `window` keys up to each query
                mask = band_mask(T, self.window, x.device)
            else:
                key_mask = None if mask is None else mask[:, 0, 0, :]
                k, v, mask = cache.update_window(self.layer, slots, k, v, key_mask)
        elif cache is not None:
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
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
            y = y.reshape(batch, self.n_heads, 1, self.head_dim)
        elif groups > 1 and mask is not None:
            # Each key/value head repeated for its group of query heads (a copy, for this product only).
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
        elif is_causal and _explicit_pays_off(q):
            y = explicit_causal_attention(q, k, v, dropout, self.scale)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout, enable_gqa=groups > 1,
                scale=self.scale,
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


def explicit_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0, scale: float | None = None
) -> torch.Tensor:
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
        scores = torch.baddbmm(bias, q.float(), k.float().transpose(1, 2), alpha=scale or head_dim**-0.5)
        weights = torch.softmax(scores, dim=-1).to(v.dtype)
        if dropout > 0:
            weights = F.dropout(weights, dropout)
        return torch.bmm(weights, v).view(batch, n_heads, T, head_dim)


def band_mask(n: int, window: int, device=None) -> torch.Tensor:
    """(n, n) bool: position i attends positions i - window < j <= i (a sliding window of `window` keys)."""
    distance = torch.arange(n, device=device)[:, None] - torch.arange(n, device=device)[None, :]
    return (distance >= 0) & (distance < window)


def causal_mask(n_queries: int, n_keys: int, offset: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) bool: query i (at absolute slot offset+i) may attend keys at slots <= offset+i."""
    q_slots = torch.arange(offset, offset + n_queries, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= q_slots
