"""Learning-rate schedule (book appendix D): linear warm-up, then cosine decay to a floor.

Warm-up keeps the first updates small while AdamW's moment estimates are still noisy; cosine decay
lowers the rate smoothly so training settles instead of bouncing around a minimum. A pure function of
the step, so resuming at step k needs nothing but k.
"""

from __future__ import annotations

import math


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
