"""Mixture of experts (Qwen3-MoE): a router picks a few SwiGLU experts per token, computed grouped.

    probs = softmax(router(x))                     (tokens, experts), in float32
    w, e = top_k(probs)                            each token's k experts and their weights
    w = w / sum(w)                                 when `norm_topk` (Qwen3-MoE renormalises)
    y = sum_j w_j * down_e_j(silu(gate_e_j(x)) * up_e_j(x))

Decisions:
- Grouped, not a loop over experts for every token: the (token, expert) assignments are sorted by expert and
  each expert's rows go through one product (`F.grouped_mm`, one call for all experts), so the work is the
  k / n_experts share of a dense layer's, and no token is ever dropped (no capacity limit).
- Expert weights are stored stacked as (experts, out, in) like a Linear's (`gate_up`: gate rows then up rows,
  `down`) and read transposed by the grouped product: on CPU that "NT" product was 20% faster than the same
  product on (experts, in, out) weights (64 experts, 8k assignments, d 512; torch 2.13, 2 cores).
- The routing weights scale each assignment's hidden activation (width expert_hidden_dim), not its output
  (width emb_dim): the same result, by linearity of `down`, on the smaller tensor.
- Under `torch.compile` (the compiled decode step) the grouped product has no float32 kernel to trace, so the
  chosen experts' weights are gathered per assignment and applied by batched products instead: the same
  result, and what decoding one token needs anyway.
- The Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4-6) as transformers computes it: the
  fraction of assignments each expert got times its mean router probability, over all layers of the step.
  In training each layer keeps its step's sums in `router_stats`; `take_router_aux_loss(model)` combines
  them, and the training loop adds `router_aux_loss_coef` times it to every task's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.config import ModelConfig


class MoEFeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        n, d, h = config.n_experts, config.emb_dim, config.expert_hidden_dim
        self.n_experts, self.top_k, self.norm_topk = n, config.n_experts_active, config.norm_topk
        self.router = nn.Linear(d, n, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n, 2 * h, d))
        self.down = nn.Parameter(torch.empty(n, d, h))
        for p in (self.gate_up, self.down):
            nn.init.normal_(p, std=0.02)
        self.router_stats: tuple[torch.Tensor, torch.Tensor, int] | None = None
        # LoRA on the experts (models/lora.StackedLoRA): None unless `--lora-targets ...,experts`
        self.lora_gate_up: nn.Module | None = None
        self.lora_down: nn.Module | None = None

    def _adapter(self, name: str) -> nn.Module | None:
        adapter = getattr(self, name)
        return adapter if adapter is not None and adapter.enabled else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probs (N, E) float32, weights (N, k) in x's dtype, experts (N, k)) for tokens x (N, d)."""
        probs = torch.softmax(self.router(x), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, weights, experts = self.route(x)
        if self.training:  # summed over the step's forwards (DPO runs several) until the loss takes them
            counts = torch.zeros(self.n_experts, device=x.device).index_add_(
                0, experts.flatten(), torch.ones(experts.numel(), device=x.device)
            )
            stats = (counts, probs.sum(dim=0), x.shape[0])
            if self.router_stats is not None:
                stats = tuple(a + b for a, b in zip(self.router_stats, stats))
            self.router_stats = stats
        if torch.compiler.is_compiling():
            y = self._gathered(x, weights, experts)
        else:
            y = self._grouped(x, weights, experts)
        return y.view(shape)

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        flat = experts.flatten()  # assignment i is token i // k
        order = flat.argsort(stable=True)
        ends = torch.bincount(flat, minlength=self.n_experts).cumsum(0).to(torch.int32)
        rows = order // self.top_k
        xs = x[rows]
        gate_up = F.grouped_mm(xs, self.gate_up.transpose(1, 2), offs=ends)
        if adapter := self._adapter("lora_gate_up"):
            gate_up = gate_up + adapter.grouped(xs, ends)
        gate, up = gate_up.chunk(2, dim=-1)
        hidden = F.silu(gate) * up * weights.flatten()[order, None]
        y = F.grouped_mm(hidden, self.down.transpose(1, 2), offs=ends)
        if adapter := self._adapter("lora_down"):
            y = y + adapter.grouped(hidden, ends)
        return torch.zeros_like(x).index_add_(0, rows, y)

    def _gathered(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        flat = experts.flatten()
        xs = x.repeat_interleave(self.top_k, dim=0)[:, None]  # (N*k, 1, d)
        gate_up = torch.bmm(xs, self.gate_up[flat].transpose(1, 2))
        if adapter := self._adapter("lora_gate_up"):
            gate_up = gate_up + adapter.gathered(xs, flat)
        gate, up = gate_up.chunk(2, dim=-1)
        hidden = F.silu(gate) * up * weights.flatten()[:, None, None]
        y = torch.bmm(hidden, self.down[flat].transpose(1, 2))
        if adapter := self._adapter("lora_down"):
            y = y + adapter.gathered(hidden, flat)
        return y.view(x.shape[0], self.top_k, -1).sum(dim=1)


def take_router_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The load-balancing loss of the training forwards since the last call, over every MoE layer; clears them.

    None when the model has no experts or ran no training forward.
    """
    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward) and m.router_stats is not None]
    stats = [m.router_stats for m in layers]
    for m in layers:
        m.router_stats = None
    if not stats:
        return None
    n_experts = stats[0][0].numel()
    rows = sum(s[2] for s in stats)
    fraction = sum(s[0] for s in stats) / rows
    mean_prob = sum(s[1] for s in stats) / rows
    return n_experts * (fraction * mean_prob).sum()
