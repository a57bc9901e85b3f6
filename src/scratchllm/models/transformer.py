"""The transformer both architectures share: pre-norm blocks with shortcuts, embeddings, output head.

GPT-2 (book ch. 4) and Llama differ only in the components their `ModelConfig` names: the norm
(LayerNorm / RMSNorm), the feed-forward (GELU MLP / SwiGLU) and how positions enter (a learned table
added to the token embeddings / rotary embeddings inside attention). Everything else, the block
skeleton, the attention core, the KV cache and the output head, is one code path.

A token's path: id -> token embedding (+ position embedding for GPT-2) -> dropout -> n_layers x
[x + attn(norm1(x)), x + ff(norm2(x))] -> final norm -> output head -> logits over the vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.attention import CausalSelfAttention, KVCache, causal_mask
from scratchllm.models.config import ModelConfig
from scratchllm.models.gpt2 import FeedForward, LayerNorm
from scratchllm.models.llama import RMSNorm, SwiGLUFeedForward
from scratchllm.models.rope import rope_cache


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.emb_dim, config.norm_eps)
    return LayerNorm(config.emb_dim, config.norm_eps, bias=config.bias)


class TransformerBlock(nn.Module):
    """Pre-norm block: attention then feed-forward, each wrapped in a shortcut (residual) connection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.ff = SwiGLUFeedForward(config) if config.mlp == "swiglu" else FeedForward(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x, rope=None, start=None, mask=None):
        x = x + self.drop(self.attn(self.norm1(x), rope, start, mask))
        return x + self.drop(self.ff(self.norm2(x)))


class Transformer(nn.Module):
    """A GPT-2 or Llama language model (or a mix of their components), as `config` says."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = None if config.uses_rope else nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.tie_weights()
        if config.uses_rope:
            self.register_buffer("rope_cos", torch.empty(0), persistent=False)
            self.register_buffer("rope_sin", torch.empty(0), persistent=False)
            self.init_rope()
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual branches, so shrink their outputs.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ff.fc2.weight", "ff.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    # -- the output head: every other module reaches it through these, never by its parameter name -------
    def tie_weights(self) -> None:
        """Share the head's weight with the token embedding when the config says so (also after loading)."""
        if self.config.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    @property
    def head_weight(self) -> torch.Tensor:
        """The (vocab, emb_dim) output projection, whatever module holds it (a plain, int8 or compiled Linear)."""
        return self.out_head.weight

    @property
    def is_tied(self) -> bool:
        return getattr(self.out_head, "weight", None) is self.tok_emb.weight

    def init_rope(self) -> None:
        """(Re)compute the RoPE cos/sin tables: needed again after building the model on the meta device."""
        c = self.config
        cos, sin = rope_cache(c.head_dim, c.context_length, c.rope_base, c.rope_scaling)
        self.rope_cos, self.rope_sin = cos.to(self.tok_emb.weight.device), sin.to(self.tok_emb.weight.device)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- forward -------------------------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        start: int | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (batch, T, vocab) for token ids `idx` (batch, T).

        start:     with a KV cache set up, the cache slot of idx[:, 0] (None = no cache, training).
        positions: position ids, (T,) or (batch, T); default start, start+1, ... (left-padded batches pass
                   their own so every row counts from its first real token).
        key_mask:  (batch, n_slots) bool, False for padding slots that no query may attend.
        last_only: compute logits for the last position only (generation needs nothing else).
        """
        x = self.hidden(idx, start, positions, key_mask)
        return self.out_head(x[:, -1:] if last_only else x)

    def hidden(
        self,
        idx: torch.Tensor,
        start: int | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        head_follows: bool = True,
    ) -> torch.Tensor:
        """Final-normalised hidden states (batch, T, emb_dim): everything but the output head.

        Training feeds these to a fused head + cross-entropy (`training.loss`) that never holds all logits.
        `head_follows=False` tells a tied model that its head will not add a dense gradient to the embedding
        (a classifier on top), so the embedding's own gradient must be dense.
        """
        batch, T = idx.shape
        offset = start or 0
        # The last position from plain integers when possible: reading a tensor back would split a compiled graph.
        last = offset + T - 1 if positions is None else int(positions.max())
        if last >= self.config.context_length:
            from scratchllm.errors import ScratchLLMError

            raise ScratchLLMError(f"position {last} is beyond the model's context length {self.config.context_length}")
        if positions is None:
            positions = torch.arange(offset, offset + T, device=idx.device)
        x = self._embed_tokens(idx, head_follows)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
            rope = (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])
        x = self.drop_emb(x)
        mask = None
        if key_mask is not None:
            n_keys = offset + T
            mask = causal_mask(T, n_keys, offset, idx.device)[None, None] & key_mask[:, None, None, :n_keys]
            # A padding query that may see no key would give NaN; let every query see its own slot.
            mask = mask | _eye_offset(T, n_keys, offset, device=idx.device)[None, None]
        for block in self.blocks:
            x = block(x, rope, start, mask)
        return self.final_norm(x)

    def _embed_tokens(self, idx: torch.Tensor, head_follows: bool = True) -> torch.Tensor:
        # With a tied head, the weight's gradient is already a dense (vocab, d) matrix from the head's
        # product; a sparse embedding gradient is then added into the rows in use only, instead of
        # materialising and adding a second dense (vocab, d) gradient (~0.3 s per step for GPT-2 on CPU).
        # torch.compile cannot trace sparse tensors, so a compiled step keeps the dense gradient.
        weight = self.tok_emb.weight
        sparse = (
            head_follows
            and weight.requires_grad
            and torch.is_grad_enabled()
            and self.is_tied
            and not torch.compiler.is_compiling()
        )
        return F.embedding(idx, weight, sparse=sparse)

    # -- KV cache ------------------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_len: int | None = None, dtype=None, device=None) -> None:
        """Preallocate a KV cache for `batch_size` sequences of up to `max_len` tokens in every layer."""
        max_len = min(max_len or self.config.context_length, self.config.context_length)
        p = self.tok_emb.weight
        for block in self.blocks:
            attn = block.attn
            attn.kv_cache = KVCache(batch_size, attn.n_kv_heads, max_len, attn.head_dim, dtype or p.dtype,
                                    device or p.device)  # fmt: skip

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    @torch.no_grad()
    def use_decode_layout(self) -> Transformer:
        """Store float32 Linear weights input-major, for faster one-token decoding on CPU (inference only).

        Decoding multiplies one row vector by every weight matrix, a memory-bound product. On CPUs (measured
        with torch 2.13's BLAS on 2 cores) `x @ W` with W stored (in, out) streams about 1.2-2x faster than
        with `nn.Linear`'s (out, in) layout. The parameter becomes a transposed view of an (in, out) tensor:
        `F.linear` then passes the contiguous (in, out) matrix straight to BLAS. Values, names and
        `state_dict()` are unchanged; bf16 weights are left alone (their kernels prefer the usual layout).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32 and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    # -- sizes ---------------------------------------------------------------------------------------------
    def num_parameters(self, count_tied_head: bool = False) -> int:
        """Parameter count; with a tied head, `count_tied_head=True` counts it again (the book's untied figure)."""
        n = sum(p.numel() for p in self.parameters())
        if count_tied_head and self.is_tied:
            n += self.head_weight.numel()
        return n


def _eye_offset(n: int, m: int, offset: int, **kw) -> torch.Tensor:
    """(n, m) bool with True where column == row + offset (each query's own slot)."""
    return torch.arange(m, **kw)[None, :] == (torch.arange(n, **kw)[:, None] + offset)
