"""Perplexity and bits per byte of a model on a text, with a sliding window for texts longer than the context.

Every token after the first is scored exactly once, token-weighted: windows of `context` tokens start every
`stride` tokens, and a window scores only the targets that no earlier window scored, so with a stride
below the context each scored token sees at least `context - stride` tokens of history (stride = context:
disjoint windows, the cheapest and the least context). This is the procedure of transformers' perplexity
guide, and the tests hold our figure to transformers' own loss computed that way. Bits per byte divide the
total negative log-likelihood (in bits) by the text's UTF-8 bytes, which compares models with different
tokenizers; windows of equal length are batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.training.loss import IGNORE_INDEX


@dataclass
class Perplexity:
    tokens: int  # scored tokens (every token after the first)
    nats: float  # total negative log-likelihood
    n_bytes: int  # UTF-8 bytes of the text
    windows: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.n_bytes

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "loss": self.loss, "bits_per_byte": self.bits_per_byte,
                "tokens": self.tokens, "bytes": self.n_bytes, "windows": self.windows}  # fmt: skip


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored): inputs ids[begin:end] predict ids[begin+1:end+1]; targets below
    `first_scored` (absolute index) were scored by an earlier window."""
    if n_tokens < 2:
        raise ScratchLLMError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    out, next_target = [], 1
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + context, n_tokens - 1)
        out.append((begin, end, next_target))
        next_target = end + 1
        if end == n_tokens - 1:
            break
    return out


@torch.no_grad()
def perplexity(model, ids: list[int], n_bytes: int, context: int | None = None, stride: int | None = None,
               batch_size: int = 8, progress: bool = False) -> Perplexity:  # fmt: skip
    """Token-weighted perplexity of `model` on `ids` (see the module docstring)."""
    from tqdm import tqdm

    limit = model.config.context_length
    context = limit if context is None else context  # 0 is an error below, not "the default"
    stride = context if stride is None else stride
    if not 1 <= context <= limit:
        raise ScratchLLMError(f"--context must be between 1 and the model's context length {limit}, got {context}")
    if not 1 <= stride <= context:
        raise ScratchLLMError(f"--stride must be between 1 and the context {context}, got {stride}")
    if batch_size < 1:
        raise ScratchLLMError(f"--batch-size must be >= 1, got {batch_size}")
    device = model.device
    was_training = model.training
    model.eval()
    data = torch.tensor(ids, dtype=torch.long)
    spans = windows(len(ids), context, stride)
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        groups.setdefault(span[1] - span[0], []).append(span)
    nats, scored = 0.0, 0
    bar = tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            part = group[i : i + batch_size]
            inputs = torch.stack([data[b:e] for b, e, _ in part])
            targets = torch.stack([data[b + 1 : e + 1] for b, e, _ in part])
            for row, (b, _, first) in enumerate(part):
                targets[row, : max(first - b - 1, 0)] = IGNORE_INDEX
            logits = model(inputs.to(device)).float()
            flat = targets.to(device).flatten()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), flat, ignore_index=IGNORE_INDEX,
                                                    reduction="sum")  # fmt: skip
            nats += nll.item()
            scored += int((flat != IGNORE_INDEX).sum())
            bar.update(len(part))
    bar.close()
    model.train(was_training)
    return Perplexity(scored, nats, n_bytes, len(spans))
