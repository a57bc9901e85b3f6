"""Turning next-token logits into a choice (book ch. 5.3, plus top-p, min-p and repetition penalty).

Order of operations (the common convention, as in HF): repetition penalty on the raw logits, then
temperature scaling, then the filters that remove unlikely tokens (top-k, top-p, min-p) by setting their
logits to -inf, then a softmax and one draw by inverse CDF. Temperature 0 means greedy (argmax); it skips
everything except the repetition penalty. Draws come from an explicit `torch.Generator`, so a seed reproduces
a sample exactly. A batch is sampled in one pass with per-row settings (`sample_rows`), on the device,
without copying anything to the host: the engine then synchronises once per step, not once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError, check_fields


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability sums to >= top_p
    min_p: float | None = None  # keep tokens at least min_p times as likely as the most likely one
    repetition_penalty: float = 1.0  # > 1 discourages tokens already present (CTRL, Keskar et al. 2019)
    seed: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "generation settings")
        if self.temperature < 0:
            raise ScratchLLMError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ScratchLLMError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ScratchLLMError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ScratchLLMError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ScratchLLMError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive logits (multiply negative ones) of every token in `seen` (batch, n) by `penalty`."""
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to (batch, vocab) logits; removed tokens get -inf."""
    return filter_rows(logits, [cfg] * logits.shape[0])


def filter_rows(logits: torch.Tensor, cfgs: list[SamplingConfig]) -> torch.Tensor:
    """`filter_logits` with one config per row (greedy rows are left at temperature 1)."""
    scaled = logits / _row_temperatures(cfgs, logits.device)
    order, keep = _kept_in_order(scaled, cfgs)
    return scaled.masked_fill(~keep.scatter(1, order, keep), float("-inf"))


def _row_temperatures(cfgs: list[SamplingConfig], device) -> torch.Tensor:
    return torch.tensor([c.temperature or 1.0 for c in cfgs], device=device).unsqueeze(1)


def _row_values(cfgs: list[SamplingConfig], name: str, off: float, device) -> torch.Tensor:
    """One column (rows, 1) of a setting, `off` where a row does not use it."""
    values = [off if getattr(c, name) is None else float(getattr(c, name)) for c in cfgs]
    return torch.tensor(values, device=device).unsqueeze(1)


def _kept_in_order(scaled: torch.Tensor, cfgs: list[SamplingConfig]) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, keep): each row's token ids sorted from most to least likely, and which of them survive its
    top-k, top-p and min-p (in that order). Every row has its own settings, so one pass serves a whole batch;
    the survivors of a row are always a prefix of its order, and the most likely token always survives."""
    vocab, device = scaled.shape[-1], scaled.device
    ordered, order = torch.sort(scaled, dim=-1, descending=True)
    keep = torch.ones_like(ordered, dtype=torch.bool)
    if any(c.top_k is not None for c in cfgs):
        k = _row_values(cfgs, "top_k", vocab, device).long().clamp(max=vocab)
        keep &= ordered >= ordered.gather(1, k - 1)  # ties with the k-th token stay, as in transformers
    if any(c.top_p is not None and c.top_p < 1 for c in cfgs):
        probs = ordered.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ahead of each one
        top_p = _row_values(cfgs, "top_p", 1.0, device)
        keep &= (before < top_p) | (top_p >= 1)  # top_p 1 keeps all, whatever the rounding of the sums
    if any(c.min_p is not None and c.min_p > 0 for c in cfgs):
        probs = ordered.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        keep &= probs >= _row_values(cfgs, "min_p", 0.0, device) * probs[:, :1]
    return order, keep


def sample_rows(
    logits: torch.Tensor,
    cfgs: list[SamplingConfig],
    uniforms: torch.Tensor,
    seen: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """(rows, vocab) logits -> (rows,) chosen ids, each row with its own settings, all on the logits' device.

    `uniforms` (rows,) in [0, 1) are the random draws, one per row (the caller decides whose generator
    makes each, so a seeded row draws the same whatever shares its batch); a row picks the first token whose
    cumulative probability exceeds its draw. `seen[i]` (1, n) holds row i's ids for its repetition penalty.
    Nothing here copies to the host, so a decode step synchronises once, when it reads the chosen ids.
    """
    logits = logits.float()
    for i, c in enumerate(cfgs):
        if c.repetition_penalty != 1.0 and seen is not None and seen[i] is not None:
            logits[i : i + 1] = apply_repetition_penalty(logits[i : i + 1], seen[i], c.repetition_penalty)
    greedy = logits.argmax(dim=-1)
    if all(c.greedy for c in cfgs):
        return greedy
    scaled = logits / _row_temperatures(cfgs, logits.device)
    order, keep = _kept_in_order(scaled, cfgs)
    ordered = scaled.gather(1, order).masked_fill(~keep, float("-inf"))
    cdf = ordered.softmax(dim=-1).cumsum(dim=-1)
    pick = torch.searchsorted(cdf, uniforms.to(cdf).unsqueeze(1) * cdf[:, -1:], right=True)
    pick = torch.minimum(pick, keep.sum(dim=-1, keepdim=True) - 1)  # rounding never reaches a removed token
    sampled = order.gather(1, pick).squeeze(1)
    is_greedy = torch.tensor([c.greedy for c in cfgs], device=logits.device)
    return torch.where(is_greedy, greedy, sampled)


def sample_next(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """(batch, vocab) logits of the last position -> (batch, 1) chosen token ids, every row alike."""
    n = logits.shape[0]
    uniforms = torch.rand(n, generator=generator, device=logits.device)
    rows_seen = None if seen is None else [seen[i : i + 1] for i in range(n)]
    return sample_rows(logits, [cfg] * n, uniforms, rows_seen).unsqueeze(1)
