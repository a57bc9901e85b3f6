"""A compiled one-token decode step (`--compile`), after gpt-fast, with CPU matrix-vector products as reductions.

Why: decoding one token reads every weight once, so its speed is the speed of matrix-vector products.
torch's eager CPU kernels for them (MKL for fp32, oneDNN for bf16) stream weights at 9-19 GB/s on our
2-core development machine, which reads memory at ~34 GB/s. Written as "multiply and sum over the input
axis", inductor turns each product into one vectorised, multi-threaded C++ reduction over the weight rows
that streams at 20-26 GB/s, and fuses the norms, GELU/SwiGLU, RoPE and residual adds around it. Measured
with gpt2-small at batch 1 (`benchmarks/bench_generate.py`, two runs): 33 -> 47-65 tokens/s in fp32 and
40-42 -> 52-61 in bf16 (see docs/benchmarks.md).

Decisions:
- Only the decode step is compiled. Prefill is a compute-bound matrix product, which BLAS already runs near
  peak, and its length varies from call to call.
- The reduction form is used only for a single row (batch 1, one token) inside the compiled graph
  (`GemvLinear`): with several rows the generated loop would read the weights once per row, where BLAS
  reads them once. Eager calls, prefill and batched decoding keep `F.linear`, so a model prepared for
  compiled decoding works everywhere. It accumulates in fp32, also for bf16 weights. On GPUs the plain
  forward is compiled (cuBLAS is fast there) and replayed as a CUDA graph over fixed shapes. On CPUs batched
  decoding gains less or nothing (docs/benchmarks.md): inside the compiled graph several rows go through
  MKL's (out, in) products, which the eager engine's oneDNN-packed weights (`generation.packed`) beat.
- Weights must be stored (out, in) row-major for the reduction to read them contiguously; the engine
  therefore compiles instead of packing, never both.
- The cache slot changes every step, so it is compiled as a symbolic integer, and the engine's KV cache has
  one size for its lifetime. A few compiles (one token alone; several rows with per-row slots) then serve
  every step and prompt length. inductor keeps compiled kernels in its on-disk cache: later processes start
  faster.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.linear import rewrite_linears


class GemvLinear(nn.Linear):
    """nn.Linear whose one-token product, when compiled, is an explicit multiply-and-sum (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() != 1 or not torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)  # several rows: a BLAS matrix product reads W once
        y = (x.unsqueeze(-2).float() * self.weight.float()).sum(-1)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def to_gemv(name: str, layer: nn.Linear) -> nn.Linear:
    """A plain Linear as a `GemvLinear` sharing its Parameters (ties survive); other kinds stay as they are."""
    if type(layer) is not nn.Linear:
        return layer  # int8 layers keep torch._weight_int8pack_mm
    layer.weight.data = layer.weight.data.contiguous()
    gemv = GemvLinear(layer.in_features, layer.out_features, bias=False, device="meta")
    gemv.weight, gemv.bias = layer.weight, layer.bias
    return gemv


@torch.no_grad()
def compile_decode(model: nn.Module) -> Callable:
    """The compiled one-token forward of `model` (its Linear layers become `GemvLinear` on CPU).

    The generation engine calls this once and keeps the result; the model itself holds no compiled state.
    """
    if model.device.type == "cpu":
        rewrite_linears(model, to_gemv)
        return torch.compile(model.forward, dynamic=True)
    # On a GPU the engine calls the step with fixed shapes (`Engine.fixed_shapes`), so inductor's
    # "reduce-overhead" mode records it once as a CUDA graph and replays it: one launch per token instead of
    # one per kernel, which is what bounds small-batch decoding on a GPU.
    return torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
