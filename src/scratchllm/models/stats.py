"""Sizes of a model computed from its config alone: parameters, memory, FLOPs per token.

Computed analytically so `scratchllm info llama3-8b` answers instantly without allocating 32 GB; tests
check the formulas against instantiated small models and the book's 163,009,536 for GPT-2 124M.
A mixture of experts counts every expert's parameters but only the active experts' FLOPs.
FLOPs follow the usual accounting (Kaplan et al. 2020; PaLM appendix B): a matrix product with an
(m x n) weight costs 2mn per token forward, backward costs twice the forward, and attention adds
2 * 2 * n_layers * seq_len * (n_heads * head_dim) for its score and weighted-sum products.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.models.config import ModelConfig


@dataclass
class ModelStats:
    params: int  # unique parameters (a tied head counted once)
    params_untied: int  # counting the output head separately, as the book does
    params_tied: int  # with the output head sharing the token embedding (GPT-2's own weights)
    embedding_params: int  # token (+ position) embeddings
    matmul_flops_per_token: float  # weight matrix products, forward
    attention_flops_per_token: float  # scores and weighted sum at seq_len, forward
    seq_len: int

    @property
    def forward_flops_per_token(self) -> float:
        return self.matmul_flops_per_token + self.attention_flops_per_token

    @property
    def train_flops_per_token(self) -> float:
        return 3 * self.forward_flops_per_token

    def memory_bytes(self, bytes_per_param: int) -> int:
        return self.params * bytes_per_param


def model_stats(config: ModelConfig, seq_len: int | None = None) -> ModelStats:
    d, L, V = config.emb_dim, config.n_layers, config.vocab_size
    q_dim, kv_dim, hidden = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.hidden_dim
    bias = config.bias
    attn = d * (q_dim + 2 * kv_dim) + q_dim * d
    attn_bias = (q_dim + 2 * kv_dim if config.qkv_bias else 0) + (d if bias else 0)
    active_ff = None
    if config.mlp == "moe":  # the router plus every expert; a token computes only n_experts_active of them
        expert = 3 * d * config.expert_hidden_dim
        ff, ff_bias = d * config.n_experts + config.n_experts * expert, 0
        active_ff = d * config.n_experts + config.n_experts_active * expert
    elif config.mlp in ("swiglu", "geglu"):
        ff, ff_bias = 3 * d * hidden, 0
    else:
        ff, ff_bias = 2 * d * hidden, (hidden + d if bias else 0)
    with_bias = config.norm == "layernorm" and bias
    norm = 2 * d if with_bias else d
    qk_norm = {"none": 0, "head": 2 * config.head_dim, "full": q_dim + kv_dim}[config.qk_norm]
    norms_per_block = 4 if config.norm_placement == "sandwich" else 2
    block = attn + attn_bias + ff + ff_bias + norms_per_block * norm + qk_norm
    embedding = V * d + (0 if config.uses_rope else config.context_length * d)
    head = V * d
    params = embedding + L * block + norm + (0 if config.tie_embeddings else head)
    seq_len = seq_len or config.context_length
    matmul_flops = 2 * (L * (attn + (ff if active_ff is None else active_ff)) + head)
    attention_flops = 2 * 2 * L * seq_len * q_dim
    return ModelStats(
        params=params,
        params_untied=params + (head if config.tie_embeddings else 0),
        params_tied=params - (0 if config.tie_embeddings else head),
        embedding_params=embedding,
        matmul_flops_per_token=float(matmul_flops),
        attention_flops_per_token=float(attention_flops),
        seq_len=seq_len,
    )
