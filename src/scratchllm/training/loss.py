"""Next-token cross-entropy (book ch. 5.1) and its fused, chunked form used for training.

The book computes `cross_entropy(logits.flatten(0, 1), targets.flatten())`. That materialises a
(tokens x vocab) float32 logit matrix, its log-softmax and its gradient: 100 MB each for GPT-2 at
2 x 256 tokens, 1 GB for Llama 3's 128k vocabulary at 2 x 1024. `fused_linear_cross_entropy` applies the
output head and the loss together, a chunk of rows at a time, and computes the gradients for the hidden
states and the head weight during the forward pass (the loss is a scalar, so backward only rescales
them). Peak memory drops to one chunk of logits and the separate softmax-backward pass disappears.
Results equal the plain computation (tests check values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's loss: mean negative log-likelihood of each target token (IGNORE_INDEX skipped)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, dtype: torch.dtype):
        rows = hidden.shape[0]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        single = rows <= chunk_size
        grad_weight = None
        if weight.requires_grad and not single:
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, rows, chunk_size):
            h = hidden[start : start + chunk_size].to(dtype)
            t, v = targets[start : start + chunk_size], valid[start : start + chunk_size]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = t.clamp(min=0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            total += ((lse - target_logit) * v).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), averaged over valid rows.
            grad = torch.exp_(logits.sub_(lse[:, None]))
            grad.scatter_add_(1, safe_t[:, None], torch.full_like(lse[:, None], -1.0))
            grad.mul_((v / n_valid).to(grad.dtype)[:, None])
            grad = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = (grad @ w).to(hidden.dtype)
            if weight.requires_grad and single:
                grad_weight = grad.T @ h  # autograd casts it to the weight's dtype once
            elif grad_weight is not None:
                if dtype == torch.float32:
                    grad_weight.addmm_(grad.T, h)
                else:
                    grad_weight.add_(grad.T @ h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if grad_hidden is not None else None
        gw = grad_weight * grad_output if grad_weight is not None else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding all logits at once.

    hidden: (..., d) final hidden states; weight: (vocab, d) output head; targets: (...) token ids.
    Under autocast the products run in the autocast dtype and the softmax in float32, as autocast would.
    """
    dtype = _compute_dtype(hidden)
    # Default: chunks of up to 2**26 logits (256 MB in float32); GPT-2 at 2 x 256 tokens fits in one.
    chunk_size = chunk_size or max(1, (1 << 26) // weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden.flatten(0, -2), weight, targets.flatten(), chunk_size, dtype)


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Mean next-token loss of a `Transformer` on (inputs, targets) windows; fused head + loss by default."""
    if fused:
        return fused_linear_cross_entropy(model.hidden(inputs), model.out_head.weight, targets)
    return cross_entropy(model(inputs), targets)
