"""The one place that rewrites a model's Linear layers: int8 weights, the compiled-decode layer, the eager
decode layout, and adapters (LoRA) all go through `rewrite_linears`.

Why one helper: each of these swaps or re-lays-out `nn.Linear` modules, and separate walks used to undo each
other (the compiled layer needs the (out, in) layout the decode layout had just transposed away). Callers
now state an order once (the generation engine does), and every rewrite sees qualified names, so a rewrite
can target modules by name (LoRA's `target_modules`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def rewrite_linears(
    model: nn.Module,
    rewrite: Callable[[str, nn.Linear], nn.Module],
    only: Callable[[str], bool] | None = None,
) -> int:
    """Replace each `nn.Linear` (subclasses included) by `rewrite(qualified_name, layer)`; returns how many
    were visited. `only(name)` restricts the walk. A rewrite may return the layer itself, changed in place.
    Parameters shared between layers (a tied output head) stay shared as long as the rewrite keeps them.
    """
    visited = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear) and (only is None or only(full)):
                new = rewrite(full, child)
                if new is not child:
                    setattr(parent, name, new)
                visited += 1
    return visited


@torch.no_grad()
def decode_layout(name: str, layer: nn.Linear) -> nn.Linear:
    """Store a float32 weight input-major, for faster one-token decoding on CPU (inference only).

    Decoding multiplies one row vector by every weight matrix, a memory-bound product. On CPUs (measured
    with torch 2.13's BLAS on 2 cores) `x @ W` with W stored (in, out) streams about 1.2-2x faster than
    with `nn.Linear`'s (out, in) layout. The parameter becomes a transposed view of an (in, out) tensor:
    `F.linear` then passes the contiguous (in, out) matrix straight to BLAS. Values, names and
    `state_dict()` are unchanged; bf16 weights are left alone (their kernels prefer the usual layout).
    """
    if layer.weight.dtype == torch.float32 and layer.weight.is_contiguous():
        layer.weight.data = layer.weight.data.t().contiguous().t()
    return layer
