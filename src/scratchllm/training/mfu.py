"""Hardware peaks that utilisation figures are measured against: matmul FLOP/s and memory bandwidth.

Model FLOPs utilisation (MFU) is achieved training FLOP/s over the matrix-product peak; decoding reads every
weight once per token, so its utilisation is bytes read per second over the copy bandwidth.

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


def memory_bandwidth(n_bytes: int = 1 << 28) -> float:
    """Bytes/s of a large tensor copy on the CPU (read + write counted), best of three."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best
