"""What this machine computes well, measured rather than assumed: the dtype to use, matmul peak, bandwidth.

Decisions:
- `auto` picks bf16 only where the hardware multiplies bf16 natively (a GPU, or a CPU with AVX512-BF16 or
  AMX). Elsewhere oneDNN emulates bf16 products roughly 100x slower than fp32, so an explicit bf16 request
  still works but prints one warning line with the slowdown measured on this machine.
- The matmul peak that MFU is measured against is timed once per process, at a size that takes about
  20 ms per product whatever the dtype (a fixed 2048^3 bf16 product takes a minute where bf16 is emulated),
  best of several timings. It is a floor, not a ceiling: a step that achieves more raises it, so a
  reported utilisation never exceeds 100%.
"""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

from scratchllm.errors import ScratchLLMError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 products are emulated there.
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_PEAKS: dict[tuple[torch.dtype, str], float] = {}
_warned_emulated = False


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and oneDNN is allowed to use it."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISAS_WITHOUT_BF16:
        return False
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description() -> str:
    """'AMD EPYC 9R14 (AVX512-BF16), 2 threads': the CPU that a benchmark figure comes from."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                 "unknown CPU")  # fmt: skip
    kind = "AVX512-BF16" if cpu_has_bf16() else ("AVX2, bf16 emulated" if "avx2" in _cpuinfo() else "no AVX2")
    return f"{model} ({kind}), {torch.get_num_threads()} threads"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` if this PyTorch can use it, else a clear error (not torch's assertion deep inside)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ScratchLLMError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ScratchLLMError(f"--device {device}: no CUDA GPU is available to this PyTorch ({torch.__version__})")
    return device


def resolve_dtype(name: str | None, device: str = "cpu", stored: torch.dtype | None = None) -> torch.dtype:
    """`auto`, `fp32`, `bf16` or `fp16` -> a torch dtype; an explicit bf16 on an emulating CPU warns once.

    `auto` with weights stored in `stored` follows them, as transformers' `dtype="auto"` does: fp32 weights stay
    fp32 (bf16 would change greedy outputs for little speed), 16-bit weights run in 16 bits where the hardware
    multiplies them natively (bf16 on a CPU, their own dtype on a GPU) and in fp32 where it does not.
    Without stored weights (a model built fresh) `auto` is bf16 wherever it is native.
    """
    if name in (None, "auto") and stored is not None:
        if stored not in (torch.bfloat16, torch.float16):
            return torch.float32
        if device.startswith("cuda"):
            return stored if stored == torch.float16 or torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if name in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise ScratchLLMError(f"--dtype {name!r}: expected auto, fp32 or bf16")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device == "cpu":
        warn_if_bf16_emulated()
    return dtype


def warn_if_bf16_emulated() -> None:
    """One stderr line per process when bf16 is emulated here, with the slowdown measured just now."""
    global _warned_emulated
    if _warned_emulated or cpu_has_bf16():
        return
    _warned_emulated = True
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(
        f"warning: this CPU has no native bf16 (no AVX512-BF16/AMX): bf16 matrix products are emulated at "
        f"{bf16 / 1e9:.1f} GFLOP/s, {fp32 / bf16:.0f}x slower than fp32 ({fp32 / 1e9:.0f} GFLOP/s); "
        "--dtype fp32 (or auto) is faster here",
        file=sys.stderr,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", target_s: float = 0.01,
                        max_n: int = 2048, repeats: int = 5) -> float:  # fmt: skip
    """FLOP/s of the fastest of `repeats` n^3 products; n doubles from 128 until one product takes `target_s`."""
    g = torch.Generator(device=device).manual_seed(0)  # never touch the global RNG (exact resume)

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        a @ b
        _sync(device)
        return time.perf_counter() - start

    n = 64
    while True:
        n *= 2
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        timed(a, b)  # warm-up: kernel selection, page faults
        best = timed(a, b)
        if n >= max_n or best >= target_s:
            break
    best = min([best] + [timed(a, b) for _ in range(repeats - 1)])
    return 2 * n**3 / best


def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """This process's matmul peak for `dtype` on `device`: measured on first use, raised by `utilisation`."""
    key = (dtype, device)
    if key not in _PEAKS:
        _PEAKS[key] = measure_matmul_peak(dtype, device, max_n=2048 if device == "cpu" else 8192)
    return _PEAKS[key]


def utilisation(flops_per_s: float, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Achieved FLOP/s over the peak (MFU), in [0, 1]: an achieved rate above the peak becomes the peak."""
    key = (dtype, device)
    peak = matmul_peak(dtype, device)
    if flops_per_s > peak:
        _PEAKS[key] = peak = flops_per_s
    return flops_per_s / peak


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory of this process so far, in MiB: allocated tensors on a GPU, resident memory on the CPU.

    The two are reported side by side (bench, the training log) so a figure reads the same on either.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_memory() -> int | None:
    """Bytes of memory this machine can still give without swapping (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_bandwidth(n_bytes: int = 1 << 28) -> float:
    """Bytes/s of a large tensor copy on the CPU (read + write counted), best of three.

    Decoding reads every weight once per token, so its utilisation is bytes read per second over this.
    """
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best
