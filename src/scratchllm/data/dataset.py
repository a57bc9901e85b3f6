"""Sliding-window sampling of next-token training pairs (book ch. 2.6, `GPTDatasetV1`).

Window i covers tokens `[i*stride, i*stride + max_length]`: the input is the first `max_length` of them and
the target is the same span shifted one token to the right, so position t learns to predict token t+1.
Unlike the book's version, the dataset does not copy the windows into a list of tensors: it keeps a view
of any 1-D token sequence (a list, a tensor or a numpy memmap of a multi-GB token file) and slices on
demand, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scratchllm.errors import ScratchLLMError


class SlidingWindowDataset(Dataset):
    """Input/target windows of `max_length` tokens taken every `stride` tokens."""

    def __init__(self, token_ids: Sequence[int] | np.ndarray | torch.Tensor, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ScratchLLMError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.numpy()
        self.tokens = token_ids if isinstance(token_ids, np.ndarray) else np.asarray(token_ids, dtype=np.int64)
        self.max_length = max_length
        self.stride = stride
        n = len(self.tokens) - max_length  # the last window needs one extra token for its target
        self.n_windows = 0 if n < 1 else (n - 1) // stride + 1

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n_windows:
            raise IndexError(index)
        start = index * self.stride
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.max_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]


def create_dataloader(
    token_ids: Sequence[int] | np.ndarray | torch.Tensor,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """Book's `create_dataloader_v1` over already-tokenized ids; `stride` defaults to `max_length`."""
    dataset = SlidingWindowDataset(token_ids, max_length, max_length if stride is None else stride)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )


def create_dataloader_from_text(text: str, tokenizer, **kwargs) -> DataLoader:
    """Tokenize `text` (allowing `<|endoftext|>`) then build the loader, as the book does."""
    return create_dataloader(tokenizer.encode(text, allowed_special="all"), **kwargs)
