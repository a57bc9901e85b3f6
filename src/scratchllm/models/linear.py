"""The one place that rewrites a model's Linear layers: int8 weights, oneDNN-packed fp32 weights, the
compiled-decode layer and adapters (LoRA) all go through `rewrite_linears`.

Why one helper: each of these swaps `nn.Linear` modules, and separate walks used to undo each other (the
compiled layer needs the (out, in) layout an earlier layout rewrite had transposed away). Callers now state
an order once (the generation engine does), and every rewrite sees qualified names, so a rewrite can target
modules by name (LoRA's `target_modules`).
"""

from __future__ import annotations

from collections.abc import Callable

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
