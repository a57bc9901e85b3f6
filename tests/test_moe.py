"""Mixture of experts against transformers' Qwen3-MoE on the same weights: routing, outputs, the balancing loss."""

from __future__ import annotations

import torch

from scratchllm.models.moe import MoEFeedForward, take_router_aux_loss
from scratchllm.training.loop import LossModule
from scratchllm.training.loss import lm_loss
from tests.hf_families import pair


def _layer_input(hf, ids):
    """The hidden states transformers feeds the first layer's MoE block, captured by a hook."""
    seen = {}
    hook = hf.model.layers[0].mlp.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        hf(ids)
    hook.remove()
    return seen["x"]


def test_routing_equals_transformers():
    hf, ours = pair("qwen3_moe", num_experts=8, num_experts_per_tok=3)
    x = _layer_input(hf, torch.randint(0, 300, (2, 24)))
    _, hf_weights, hf_experts = hf.model.layers[0].mlp.gate(x.reshape(-1, x.shape[-1]))
    _, weights, experts = ours.blocks[0].ff.route(x.reshape(-1, x.shape[-1]))
    assert torch.equal(experts, hf_experts)  # the same experts, in the same order
    torch.testing.assert_close(weights, hf_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(48))  # norm_topk
    with torch.no_grad():
        torch.testing.assert_close(ours.blocks[0].ff(x), hf.model.layers[0].mlp(x), rtol=1e-5, atol=1e-6)


def test_grouped_and_gathered_paths_agree_and_no_token_is_dropped():
    """Routing skewed so almost every token picks experts 0 and 1, with a few tokens alone on theirs: each
    token's output still equals transformers' (no capacity limit, no group lost); the per-assignment path
    used under torch.compile gives the same values."""
    hf, ours = pair("qwen3_moe")
    ff, hf_ff = ours.blocks[0].ff, hf.model.layers[0].mlp
    x = torch.randn(1, 40, 64)
    with torch.no_grad():
        bias = torch.zeros(8)
        bias[:2] = 30.0
        skew = lambda r: torch.nn.functional.linear(r, ff.router.weight) + bias  # noqa: E731
        ff.router.forward = skew
        hf_ff.gate.weight.copy_(ff.router.weight)
        x[0, 5] = ff.router.weight[7] * 50  # a token that picks expert 7 in spite of the skew
        _, _, experts = ff.route(x.reshape(-1, 64))
        assert (experts[:, :2].sort(-1).values == torch.tensor([0, 1])).float().mean() > 0.9
        hf_ff.gate.forward = lambda h: _hf_route(hf_ff.gate, h, bias)
        expected = hf_ff(x)
        torch.testing.assert_close(ff(x), expected, rtol=1e-5, atol=1e-6)
        flat = x.reshape(-1, 64)
        _, w, e = ff.route(flat)
        torch.testing.assert_close(ff._gathered(flat, w, e), ff._grouped(flat, w, e), rtol=1e-5, atol=1e-6)


def _hf_route(gate, h, bias):
    logits = torch.nn.functional.linear(h.reshape(-1, gate.hidden_dim), gate.weight) + bias
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    top, idx = torch.topk(probs, gate.top_k, dim=-1)
    top = top / top.sum(-1, keepdim=True) if gate.norm_topk_prob else top
    return logits, top.to(logits.dtype), idx


def test_load_balancing_loss_equals_transformers_and_trains_the_router():
    hf, ours = pair("qwen3_moe", router_aux_loss_coef=0.05)
    ids = torch.randint(0, 300, (2, 16))
    out = hf.train()(ids, labels=ids, output_router_logits=True)
    ours.train()
    ours(ids)  # a forward in training mode records each layer's routing
    torch.testing.assert_close(take_router_aux_loss(ours), out.aux_loss, rtol=1e-5, atol=1e-6)
    assert take_router_aux_loss(ours) is None  # taken once
    lm = lm_loss(ours, ids[:, :-1], ids[:, 1:])
    take_router_aux_loss(ours)
    # the loop's loss adds coef x aux, and its gradient reaches the routers
    loss = LossModule(ours, lambda m, i, t: lm_loss(m, i, t))(ids[:, :-1], ids[:, 1:])
    assert abs(loss.item() - lm.item()) > 1e-4
    loss.backward()
    assert ours.blocks[0].ff.router.weight.grad.abs().sum() > 0
    assert isinstance(ours.blocks[0].ff, MoEFeedForward)
