"""The book's simple word tokenizer (ch. 2.2-2.4): a teaching class, not used by the models.

Design: split on whitespace and the punctuation `,.:;?_!"()'` and `--` (the book's regex), build a
vocabulary of the distinct tokens of a text, and map words to ids. Version 1 fails on an unknown word;
version 2 (`unk=True`) maps it to `<|unk|>`. `<|endoftext|>` separates documents in both.
Real models use byte-level BPE (`scratchllm.tokenizers.bpe`), which has no unknown words at all.
"""

from __future__ import annotations

import re

from scratchllm.errors import ScratchLLMError

SPLIT_PATTERN = re.compile(r'([,.:;?_!"()\']|--|\s)')
# Decoding puts words back with single spaces, then removes the space before punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r'\s+([,.:;?!"()\'])')
UNK = "<|unk|>"
END_OF_TEXT = "<|endoftext|>"


def split_words(text: str) -> list[str]:
    """The book's pre-tokenization: words and punctuation marks, whitespace dropped."""
    return [t.strip() for t in SPLIT_PATTERN.split(text) if t.strip()]


class SimpleTokenizer:
    """Word-level tokenizer with a vocabulary built from a text (book's `SimpleTokenizerV1`/`V2`)."""

    def __init__(self, vocab: dict[str, int], unk: bool = True):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in vocab.items()}
        self.unk = unk
        if unk and UNK not in self.str_to_int:
            raise ScratchLLMError(f"vocabulary has no {UNK} token but unk=True")

    @classmethod
    def from_text(cls, text: str, unk: bool = True) -> SimpleTokenizer:
        """Vocabulary = sorted distinct tokens of `text`, then `<|endoftext|>` and `<|unk|>` (V2)."""
        words = sorted(set(split_words(text)))
        words += [END_OF_TEXT, UNK] if unk else [END_OF_TEXT]
        return cls({w: i for i, w in enumerate(words)}, unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in split_words(text):
            if word in self.str_to_int:
                ids.append(self.str_to_int[word])
            elif self.unk:
                ids.append(self.str_to_int[UNK])
            else:
                raise ScratchLLMError(f"word {word!r} is not in the vocabulary (use unk=True to map it to {UNK})")
        return ids

    def decode(self, ids: list[int]) -> str:
        text = " ".join(self.int_to_str[i] for i in ids)
        return _SPACE_BEFORE_PUNCT.sub(r"\1", text)
