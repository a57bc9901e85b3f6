"""Tokenizers: the book's word tokenizer, byte-level BPE (GPT-2 compatible), and our BPE trainer."""

from scratchllm.tokenizers.bpe import END_OF_TEXT, GPT2_PATTERN, GPT4_PATTERN, BPETokenizer
from scratchllm.tokenizers.formats import load_tokenizer
from scratchllm.tokenizers.simple import SimpleTokenizer
from scratchllm.tokenizers.train import train_bpe

__all__ = [
    "BPETokenizer",
    "SimpleTokenizer",
    "load_tokenizer",
    "train_bpe",
    "END_OF_TEXT",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
]
