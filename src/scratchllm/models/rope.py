"""Rotary position embeddings (RoPE, Su et al. 2021), with Llama 3.1/3.2 frequency scaling.

Instead of adding a position vector, RoPE rotates pairs of query/key features by an angle proportional
to the position, so the dot product of a query and a key depends only on their distance. We use the
"rotate half" pairing (feature i with feature i + head_dim/2), the layout of HuggingFace's Llama weights;
Meta's original checkpoints pair neighbouring features and are permuted when loaded.

Llama 3.1 stretches the context by dividing low frequencies (long wavelengths) by `factor`, keeping
high frequencies, and blending smoothly in between; that is `llama3_scaled_frequencies`.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/d) for i in [0, d/2): one rotation speed per feature pair."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def llama3_scaled_frequencies(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_context_length"]
    wavelength = 2 * math.pi / inv_freq
    # 0 for wavelengths longer than old_context/low (fully scaled), 1 below old_context/high (kept).
    keep = ((old_context / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return keep * inv_freq + (1 - keep) * inv_freq / factor


def rope_cache(
    head_dim: int, max_positions: int, base: float = 10000.0, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_positions, head_dim) in float32.

    Computed in float32 like HF and Meta do, so logits agree with theirs at long positions too.
    """
    inv_freq = inverse_frequencies(head_dim, base)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "llama3"))
        if kind == "linear":  # positions interpolated: every frequency divided by the factor (Gemma 3 4B+)
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "llama3":
            inv_freq = llama3_scaled_frequencies(inv_freq, scaling)
        else:
            from scratchllm.errors import ScratchLLMError

            raise ScratchLLMError(f"rope_scaling type {kind!r} is not supported (only 'llama3' and 'linear')")
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (batch, heads, tokens, head_dim) by per-position angles; cos/sin broadcast over heads."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
