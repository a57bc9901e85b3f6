"""The transformer every family shares: blocks with shortcuts, embeddings, output head.

GPT-2 (book ch. 4), Llama, Qwen3, Gemma 3 and Olmo 3 differ only in the components their `ModelConfig`
names: the norm (LayerNorm / RMSNorm / (1 + w) RMSNorm) and where it sits (before, around or after each
sublayer), the feed-forward (GELU MLP / SwiGLU / GeGLU / experts), how positions enter (a learned table
added to the token embeddings / rotary embeddings inside attention), QK-norm, sliding windows. Everything
else, the block skeleton, the attention core, the KV cache and the output head, is one code path.

A token's path (pre-norm): id -> token embedding (+ position embedding for GPT-2) -> dropout -> n_layers x
[x + attn(norm1(x)), x + ff(norm2(x))] -> final norm -> output head -> logits over the vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.attention import CausalSelfAttention, KVCache
from scratchllm.models.config import ModelConfig
from scratchllm.models.gemma import GeGLUFeedForward
from scratchllm.models.gpt2 import FeedForward
from scratchllm.models.llama import SwiGLUFeedForward
from scratchllm.models.moe import MoEFeedForward
from scratchllm.models.norms import make_norm
from scratchllm.models.rope import rope_cache


def make_feed_forward(config: ModelConfig) -> nn.Module:
    kinds = {"moe": MoEFeedForward, "swiglu": SwiGLUFeedForward, "geglu": GeGLUFeedForward, "gelu": FeedForward}
    return kinds[config.mlp](config)


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a shortcut (residual) connection, normalised where the config
    places its norms: before each sublayer (GPT-2, Llama), before and after (Gemma), or after only (Olmo)."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        before = config.norm_placement in ("pre", "sandwich")
        after = config.norm_placement in ("sandwich", "post")
        self.norm1 = make_norm(config) if before else None
        self.attn = CausalSelfAttention(config, layer)
        self.post_attn_norm = make_norm(config) if after else None
        self.norm2 = make_norm(config) if before else None
        self.ff = make_feed_forward(config)
        self.post_ff_norm = make_norm(config) if after else None
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x, rope=None, cache=None, slots=0, n_keys=0, mask=None):
        h = self.attn(_norm(self.norm1, x), rope, cache, slots, n_keys, mask)
        x = x + self.drop(_norm(self.post_attn_norm, h))
        h = self.ff(_norm(self.norm2, x))
        return x + self.drop(_norm(self.post_ff_norm, h))


def _norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


class Transformer(nn.Module):
    """A GPT-2 or Llama language model (or a mix of their components), as `config` says."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = None if config.uses_rope else nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.tie_weights()
        if config.uses_rope:
            for name in ("rope_cos", "rope_sin", "rope_local_cos", "rope_local_sin"):
                self.register_buffer(name, torch.empty(0), persistent=False)
            self.init_rope()
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual branches, so shrink their outputs.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ff.fc2.weight", "ff.down.weight", "ff.down")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    # -- the output head: every other module reaches it through these, never by its parameter name -------
    def tie_weights(self) -> None:
        """Share the head's weight with the token embedding when the config says so (also after loading)."""
        if self.config.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    @property
    def head_weight(self) -> torch.Tensor:
        """The (vocab, emb_dim) output projection, whatever module holds it (a plain, int8, compiled or LoRA
        Linear; a LoRA head gives its base weight plus the update, differentiable in the adapters)."""
        effective = getattr(self.out_head, "effective_weight", None)
        return self.out_head.weight if effective is None else effective

    @property
    def is_tied(self) -> bool:
        return getattr(self.out_head, "weight", None) is self.tok_emb.weight

    # -- where the model lives: every tensor a caller creates for it goes here -----------------------------
    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (inference runs in it; training may autocast on top)."""
        return self.tok_emb.weight.dtype

    def init_rope(self) -> None:
        """(Re)compute the RoPE cos/sin tables: needed again after building the model on the meta device.

        Local (sliding-window) layers may have their own base and no long-context scaling (Gemma 3): a second
        pair of tables, empty when no layer needs it.
        """
        c = self.config
        cos, sin = rope_cache(c.head_dim, c.context_length, c.rope_base, c.rope_scaling)
        self.rope_cos, self.rope_sin = cos.to(self.device), sin.to(self.device)
        cos = sin = torch.empty(0)
        if c.rope_local_base is not None and any(c.window(i) for i in range(c.n_layers)):
            cos, sin = rope_cache(c.head_dim, c.context_length, c.rope_local_base)
        self.rope_local_cos, self.rope_local_sin = cos.to(self.device), sin.to(self.device)

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
        cache: KVCache | None = None,
        start: int = 0,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (batch, T, vocab) for token ids `idx` (batch, T).

        Without a cache (training, scoring) the sequence is processed whole. With a `KVCache` either
        - `start`: every row's tokens go to slots start, start+1, ... (prefill, possibly in chunks), or
        - `positions` (batch, 1) and `key_mask` (batch, n_keys): one new token per row at its own slot,
          rows of different lengths together; key_mask[i, j] says whether row i may attend slot j.
        last_only: compute logits for the last position only (generation needs nothing else).
        """
        x = self.hidden(idx, cache, start, positions, key_mask)
        return self.out_head(x[:, -1:] if last_only else x)

    def hidden(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
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
        mask = None
        if positions is None:
            n_keys = start + T
            positions = torch.arange(start, n_keys, device=idx.device)
            slots: int | torch.Tensor = start  # a later prefill chunk gets its offset causal mask in attention
        else:
            if cache is None or key_mask is None or T != 1:
                raise ValueError("per-row positions need a KV cache, a key mask and one token per row")
            n_keys = key_mask.shape[1]
            slots = positions[:, 0]
            mask = key_mask[:, None, None, :]
        if n_keys > self.config.context_length:
            from scratchllm.errors import ScratchLLMError

            raise ScratchLLMError(
                f"position {n_keys - 1} is beyond the model's context length {self.config.context_length}"
            )
        x = self._embed_tokens(idx, head_follows)
        if self.config.scale_embeddings:  # sqrt(d) rounded to the weights' dtype first, as Gemma's reference
            x = x * torch.tensor(self.config.emb_dim**0.5, dtype=x.dtype)
        rope = local_rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = _rope_at(self.rope_cos, self.rope_sin, positions)
            local_rope = rope
            if self.rope_local_cos.numel():
                local_rope = _rope_at(self.rope_local_cos, self.rope_local_sin, positions)
        x = self.drop_emb(x)
        for block in self.blocks:
            x = block(x, local_rope if block.attn.window else rope, cache, slots, n_keys, mask)
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

    # -- sizes ---------------------------------------------------------------------------------------------
    def num_parameters(self, count_tied_head: bool = False) -> int:
        """Parameter count; with a tied head, `count_tied_head=True` counts it again (the book's untied figure)."""
        n = sum(p.numel() for p in self.parameters())
        if count_tied_head and self.is_tied:
            n += self.head_weight.numel()
        return n


def _rope_at(cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos/sin rows of `positions`: (T,) for a run of positions, (batch, 1) for one position per row."""
    cos, sin = cos[positions], sin[positions]
    return (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])
