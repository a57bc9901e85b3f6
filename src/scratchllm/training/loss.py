"""Next-token cross-entropy (book ch. 5.1) and its fused, chunked form used for training.

The book computes `cross_entropy(logits.flatten(0, 1), targets.flatten())`. That materialises a
(tokens x vocab) float32 logit matrix, its log-softmax and its gradient: 100 MB each for GPT-2 at
2 x 256 tokens, 1 GB for Llama 3's 128k vocabulary at 2 x 1024. `fused_linear_cross_entropy` applies the
output head and the loss together and computes the gradients for the hidden states and the head weight
during the forward pass (the loss is a scalar, so backward only rescales them). Results equal the plain
computation (tests check values and gradients against it).

Decisions, each measured on a 2-core CPU with GPT-2's head (2 x 256 tokens, bf16 autocast):
- Rows (tokens) are processed in chunks of at most 2**26 logits, so memory stays bounded for any batch.
- Within a chunk the logits are held transposed, vocabulary-major (vocab x rows), and produced, turned into
  gradients and multiplied back in blocks of `VOCAB_BLOCK` head rows. A block (4096 x rows) stays in cache
  while its softmax is taken, so the element-wise work no longer streams the whole 100 MB logit matrix
  through memory six times, and the head-weight gradient of a block is one product written straight into
  its rows. The three products of the head run at 380-410 GFLOP/s instead of 275-320 in the
  (rows x vocab) layout, and the head + loss step takes ~300 ms of products plus ~80 ms of softmax work.
- The logits keep the compute dtype (bf16 under autocast, as autocast's own product returns them); the
  softmax and the loss are computed in float32 from them, as `F.cross_entropy` under autocast does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
VOCAB_BLOCK = 4096


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's loss: mean negative log-likelihood of each target token (IGNORE_INDEX skipped)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


def _head_loss_chunk(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, grad_weight: torch.Tensor | None,
    accumulate: bool, need_grad_h: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Loss contribution and hidden-state gradient of one chunk of rows; adds the head's gradient to grad_weight.

    h: (rows, d) and w: (vocab, d) in the compute dtype; scale: (rows,) float32, 1/n_valid or 0 if ignored.
    """
    rows, vocab = h.shape[0], w.shape[0]
    ht = h.t().contiguous()
    logits_t = torch.empty(vocab, rows, dtype=h.dtype, device=h.device)
    blocks = [(b, min(b + VOCAB_BLOCK, vocab)) for b in range(0, vocab, VOCAB_BLOCK)]
    # Pass 1: logits block by block, each block's log-sum-exp over its vocabulary rows, then combined.
    block_lse = [torch.logsumexp(torch.mm(w[b:e], ht, out=logits_t[b:e]).float(), dim=0) for b, e in blocks]
    lse = torch.logsumexp(torch.stack(block_lse), dim=0)
    cols = torch.arange(rows, device=h.device)
    safe_t = targets.clamp(min=0)
    loss = ((lse - logits_t[safe_t, cols].float()) * scale).sum()
    # Pass 2: d(loss)/d(logits) = (softmax - one_hot(target)) * scale replaces each block of logits.
    for b, e in blocks:
        block = logits_t[b:e]
        grad = block.float().sub_(lse).exp_()
        hit = (safe_t >= b) & (safe_t < e)
        grad[safe_t[hit] - b, cols[hit]] -= 1.0
        block.copy_(grad.mul_(scale))
        if grad_weight is None:
            continue
        out = grad_weight[b:e]
        if out.dtype == block.dtype:
            out.addmm_(block, h) if accumulate else torch.mm(block, h, out=out)
        else:
            out.add_(block @ h) if accumulate else out.copy_(block @ h)
    return loss, (logits_t.t() @ w if need_grad_h else None)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, dtype: torch.dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE_INDEX
        scale = valid.float() / valid.sum().clamp(min=1)
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.empty_like(weight) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            loss, grad_h = _head_loss_chunk(hidden[rows].to(dtype), w, targets[rows], scale[rows], grad_weight,
                                            accumulate=start > 0, need_grad_h=need_h)  # fmt: skip
            total += loss
            if grad_hidden is not None:
                grad_hidden[rows] = grad_h
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if grad_hidden is not None else None
        gw = grad_weight * grad_output if grad_weight is not None else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding more than a chunk of logits.

    hidden: (..., d) final hidden states; weight: (vocab, d) output head; targets: (...) token ids.
    Under autocast the products run in the autocast dtype and the softmax in float32, as autocast would.
    """
    dtype = _compute_dtype(hidden)
    # Default: chunks of up to 2**26 logits (128 MB in bf16); GPT-2 at 2 x 256 tokens fits in one.
    chunk_size = chunk_size or max(1, (1 << 26) // weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden.flatten(0, -2), weight, targets.flatten(), chunk_size, dtype)


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Mean next-token loss of a `Transformer` on (inputs, targets) windows; fused head + loss by default."""
    if fused:
        return fused_linear_cross_entropy(model.hidden(inputs), model.head_weight, targets)
    return cross_entropy(model(inputs), targets)
