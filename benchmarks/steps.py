"""The training-step timing every step benchmark shares (imported by the scripts beside it)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def training_step(loss_fn: Callable[..., torch.Tensor], opt: torch.optim.Optimizer, inputs: tuple, dtype: str):
    """One forward + backward + optimizer step, under bf16 autocast when `dtype` is bf16."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn(*inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[], None], steps: int, warmup: int = 2) -> tuple[float, float]:
    """(seconds per step after `warmup` steps, this process's peak resident memory in MB)."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
