"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's matrix-product peak.

The peak is measured, not looked up: a large square matrix product in the training dtype, timed on the
device in use, so MFU reads as "how close to this machine's best matmul speed is the whole step".
"""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 2048, reps: int = 6) -> float:
    """FLOP/s of an n x n x n matrix product (best effort, after warm-up)."""
    g = torch.Generator(device=device).manual_seed(0)  # never touch the global RNG (exact resume)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)
