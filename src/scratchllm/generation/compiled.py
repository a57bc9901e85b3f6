"""A compiled one-token decode step (`--compile`), after gpt-fast: the products stay, everything between fuses.

Why: decoding one token reads every weight once, and that is all the products do; what a step spends beyond
them is the dozens of small operations between (norms, RoPE, the cache writes, the ring-buffer masks of
sliding windows, activations, residual adds), each a few microseconds of dispatch on a CPU for a vector's
worth of work. inductor fuses those into a handful of C++ loops. The products keep the kernel the eager
engine measured fastest for their shape (`generation.packed`), called as an opaque op so inductor cannot
replace it with a slower one of its own: a traced bf16 matrix-vector product becomes the blocked matrix
product that one row cannot feed, and oneDNN's blocked weights cannot enter a graph at all. The step then
costs little more than its products alone (docs/benchmarks.md has the figures).

Decisions:
- Only the decode step is compiled. Prefill is a compute-bound matrix product, which BLAS already runs near
  peak, and its length varies from call to call.
- The cache slot changes every step and the batch changes as requests come and go, so both are compiled as
  symbolic integers, and the engine's KV cache has one size for its lifetime. A few compiles (one token
  alone; several rows with per-row slots) then serve every step and prompt length. inductor keeps compiled
  kernels in its on-disk cache: later processes start faster.
- On GPUs the plain forward is compiled (cuBLAS is fast there) and replayed as a CUDA graph over fixed shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx.experimental._config as fx_config
from torch import nn


@torch.no_grad()
def compile_decode(model: nn.Module, rows: int = 1) -> Callable:
    """The compiled one-token forward of `model`, for batches of up to `rows` rows.

    The generation engine calls this once and keeps the result; the model itself holds no compiled state.
    """
    if model.device.type == "cpu":
        from scratchllm.generation.packed import prepare_linears

        prepare_linears(model, rows)  # each product's fastest kernels, which the compiled step calls as they are
        compiled = torch.compile(model.forward, dynamic=True)

        def step(*args, **kwargs):
            # Without "duck shapes", a batch that happens to equal another size of the inputs (4 rows and
            # a cache of 4 key/value heads) is not compiled as that size, to be compiled again at 3 rows.
            duck, fx_config.use_duck_shape = fx_config.use_duck_shape, False
            try:
                return compiled(*args, **kwargs)
            finally:
                fx_config.use_duck_shape = duck

        return step
    # On a GPU the engine calls the step with fixed shapes (`Engine.fixed_shapes`), so inductor's
    # "reduce-overhead" mode records it once as a CUDA graph and replays it: one launch per token instead of
    # one per kernel, which is what bounds small-batch decoding on a GPU.
    return torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
