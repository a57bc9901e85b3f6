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
  forward is compiled (cuBLAS is fast there). Batched decoding gains less or nothing: measured with
  gpt2-small fp32 (`bench`), batch 2 ran at 27 tokens/s compiled vs 35 eager (inside the compiled graph
  the products use the (out, in) layout that MKL handles slowly), batch 4 at 58 vs 45.
- Weights must be stored (out, in) row-major for the reduction to read them contiguously, so this undoes
  `Transformer.use_decode_layout()`, the eager path's layout trick.
- The cache slot `start` changes every step, so it is compiled as a symbolic integer; the cache itself has
  one size per model (`cache_length`). One compile then serves every step, prompt length and generation
  call of a batch size. inductor keeps compiled kernels in its on-disk cache: later processes start faster.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

COMPILED_CACHE_SLOTS = 8192


class GemvLinear(nn.Linear):
    """nn.Linear whose one-token product, when compiled, is an explicit multiply-and-sum (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() != 1 or not torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)  # several rows: a BLAS matrix product reads W once
        y = (x.unsqueeze(-2).float() * self.weight.float()).sum(-1)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


@torch.no_grad()
def compile_decode(model: nn.Module) -> Callable:
    """Compile `model`'s one-token forward and make `generate` use it; returns the compiled function.

    Idempotent: a second call returns the function compiled before. Works on int8-quantised models too
    (their products stay `torch._weight_int8pack_mm`).
    """
    compiled = getattr(model, "compiled_decode", None)
    if compiled is not None:
        return compiled
    if model.tok_emb.weight.device.type == "cpu":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    child.weight.data = child.weight.data.contiguous()
                    gemv = GemvLinear(child.in_features, child.out_features, bias=False, device="meta")
                    gemv.weight, gemv.bias = child.weight, child.bias  # the same Parameters: ties survive
                    setattr(parent, name, gemv)
    model.compiled_decode = torch.compile(model.forward, dynamic=True)
    return model.compiled_decode


def cache_length(model: nn.Module, needed: int) -> int:
    """KV cache slots for `needed` positions: exactly that in eager mode, one fixed size when compiled.

    A compiled step is specialised to its cache buffers' size (marking module buffers dynamic would make the
    weights' shapes symbolic too, and the products several times slower), so the compiled path always
    allocates the whole context, as gpt-fast does, capped at `COMPILED_CACHE_SLOTS` for long-context models
    unless a call needs more. Attention reads only the filled slots: the spare ones cost memory, not time.
    """
    context = model.config.context_length
    if getattr(model, "compiled_decode", None) is None:
        return min(context, needed)
    return context if needed > COMPILED_CACHE_SLOTS else min(context, COMPILED_CACHE_SLOTS)
