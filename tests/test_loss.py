"""The fused head + cross-entropy equals the book's plain loss, in values and gradients."""

import pytest
import torch

from scratchllm.training.loss import IGNORE_INDEX, cross_entropy, fused_linear_cross_entropy


def _loss_and_grads(fn, hidden, weight, targets, autocast: bool):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(h, w, targets)
    (loss * 0.5).backward()  # a non-unit upstream gradient exercises backward's rescaling
    return loss.detach(), h.grad, w.grad


def _plain(h, w, targets):
    return cross_entropy(h @ w.T, targets)


@pytest.mark.parametrize("chunk_size", [None, 7])  # one chunk of rows, or several with a ragged last one
@pytest.mark.parametrize("vocab", [300, 9000])  # one vocabulary block, or three with a ragged last one
def test_fused_loss_equals_plain_fp32(vocab, chunk_size):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 12, 32, generator=g), torch.randn(vocab, 32, generator=g) * 0.3
    targets = torch.randint(0, vocab, (2, 12), generator=g)
    targets[0, 3] = targets[1, 0] = IGNORE_INDEX
    fused = _loss_and_grads(
        lambda h, w, t: fused_linear_cross_entropy(h, w, t, chunk_size), hidden, weight, targets, False
    )
    plain = _loss_and_grads(_plain, hidden, weight, targets, False)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused[1][0, 3].abs().max() == 0 and fused[1][0, 2].abs().min() > 0  # ignored rows get no gradient
    assert fused[1].dtype == fused[2].dtype == torch.float32


def test_fused_loss_under_bf16_autocast_matches_autocast_plain():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(3, 40, 64, generator=g), torch.randn(5000, 64, generator=g) * 0.2
    targets = torch.randint(0, 5000, (3, 40), generator=g)
    targets[2, -5:] = IGNORE_INDEX
    fused = _loss_and_grads(fused_linear_cross_entropy, hidden, weight, targets, True)
    plain = _loss_and_grads(_plain, hidden, weight, targets, True)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(fused[1:], plain[1:]):
        assert a.dtype == b.dtype == torch.float32  # parameter-dtype gradients, like autocast's
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_fused_loss_all_targets_ignored_is_zero_not_nan():
    hidden, weight = torch.randn(1, 4, 8), torch.randn(50, 8)
    loss, gh, gw = _loss_and_grads(fused_linear_cross_entropy, hidden, weight, torch.full((1, 4), IGNORE_INDEX), False)
    assert loss.item() == 0.0 and gh.abs().sum() == 0 and gw.abs().sum() == 0
