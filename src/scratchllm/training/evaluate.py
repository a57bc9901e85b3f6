"""Measuring a language model: loss and perplexity over a data split (book ch. 5.1, `calc_loss_loader`).

`calc_loss_loader` averages the loss of the first `num_batches` batches of any loader, as the book does.
`split_loss` evaluates a prepared token array on windows spread evenly over the whole split (the same
windows every time, so successive evaluations are comparable) without building the split in memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scratchllm.training.loss import cross_entropy


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model, device="cpu") -> torch.Tensor:
    logits = model(input_batch.to(device))
    return cross_entropy(logits, target_batch.to(device))


@torch.no_grad()
def calc_loss_loader(loader, model, device="cpu", num_batches: int | None = None) -> float:
    """Mean loss over the first `num_batches` batches (all when None); NaN for an empty loader."""
    if len(loader) == 0:
        return float("nan")
    num_batches = min(num_batches or len(loader), len(loader))
    total = 0.0
    for i, (x, y) in enumerate(loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(x, y, model, device).item()
    return total / num_batches


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def split_loss(model, tokens: np.ndarray, seq_len: int, batches: int, batch_size: int, autocast_dtype=None) -> float:
    """Mean next-token loss on `batches * batch_size` windows spread evenly over `tokens`.

    Windows start at multiples of `seq_len`, as the book's loaders (stride = context) cut them, so on a
    small corpus trained with `sampling: epochs` the training loss measures the very windows it learned.
    """
    n_windows = batches * batch_size
    n_aligned = (len(tokens) - 1) // seq_len
    if n_aligned < 1:
        return float("nan")
    starts = np.linspace(0, n_aligned - 1, num=n_windows).round().astype(np.int64) * seq_len
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for b in range(batches):
        chunk = np.stack([tokens[s : s + seq_len + 1] for s in starts[b * batch_size : (b + 1) * batch_size]])
        data = torch.from_numpy(chunk.astype(np.int64)).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            total += cross_entropy(model(data[:, :-1]), data[:, 1:]).item()
    model.train(was_training)
    return total / batches
