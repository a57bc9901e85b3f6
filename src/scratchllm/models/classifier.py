"""A transformer turned into a text classifier (book ch. 6.5): one pooled position, a small output head.

The book replaces the 50,257-way output layer with `Linear(emb_dim, num_classes)` and reads the logits of
the last token, the one that has attended to every other. We do the same on the hidden states: pool first,
then apply the head to one vector per text (the same result as the book's, without computing logits for
every position). Pooling choices:
- `last`: the final position, padding or not (the book's choice; right padding makes it a pad token);
- `last-non-pad`: the last position that is not `pad_id`, right for left or right padding (the book's bonus
  table: 98.33% test accuracy against 95.67%; what transformers' `GPT2ForSequenceClassification` does);
- `first`: position 0 (under causal attention it has seen only itself: a baseline);
- `mean`: the mean over non-padding positions.
The backbone keeps its LM head untouched (it is simply not used), so the checkpoint stays a language model
plus a head.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError

POOLINGS = ("last", "last-non-pad", "first", "mean")
CLASSIFIER_FILE = "classifier.json"  # a classifier run folder's labels, pooling, pad id and padded length


class SequenceClassifier(nn.Module):
    unused_linears = ("backbone.out_head",)  # the language-model head is never called (LoRA skips it)

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "last", pad_id: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ScratchLLMError(f"pooling {pooling!r}: expected one of {POOLINGS}")
        if pooling in ("last-non-pad", "mean") and pad_id is None:
            raise ScratchLLMError(f"pooling {pooling!r} needs the pad token id")
        self.backbone = backbone
        self.config = backbone.config
        self.head = nn.Linear(backbone.config.emb_dim, num_classes)
        self.pooling, self.pad_id = pooling, pad_id

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def pool(self, hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(batch, T, d) hidden states -> (batch, d), one vector per text."""
        if self.pooling == "last":
            return hidden[:, -1]
        if self.pooling == "first":
            return hidden[:, 0]
        real = idx != self.pad_id
        if self.pooling == "mean":
            weights = real.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        positions = torch.arange(idx.shape[1], device=idx.device)
        return hidden[torch.arange(idx.shape[0], device=idx.device), (positions * real).argmax(-1)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, num_classes) for right- or left-padded token ids (batch, T)."""
        return self.head(self.pool(self.backbone.hidden(idx, head_follows=False), idx))


def set_trainable(model: SequenceClassifier, which: str) -> None:
    """Freeze all but `which`: head, last-block (the book: + final norm), last-two-blocks, or all."""
    choices = {"head": 0, "last-block": 1, "last-two-blocks": 2}
    if which != "all" and which not in choices:
        raise ScratchLLMError(f"trainable {which!r}: expected head, last-block, last-two-blocks or all")
    model.requires_grad_(which == "all")
    if not model.backbone.is_tied:
        model.backbone.out_head.requires_grad_(False)  # unused by a classifier (when tied, it is the embedding)
    if which == "all":
        return
    model.head.requires_grad_(True)
    n = choices[which]
    if n:
        model.backbone.final_norm.requires_grad_(True)
        for block in model.backbone.blocks[-n:]:
            block.requires_grad_(True)
