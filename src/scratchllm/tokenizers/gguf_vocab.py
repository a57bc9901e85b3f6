"""A tokenizer as llama.cpp reads it from a GGUF file (`tokenizer.ggml.*`), for `convert --to gguf`.

Byte-level BPE (GPT-2, Llama 3, Qwen, our trained tokenizers) is written as llama.cpp's `gpt2` model: every
token as GPT-2's printable characters, the merges list (`formats.bpe_merges`, which encodes like our rank
rule) and a pre-tokenizer *name*: llama.cpp does not run the regex a tokenizer carries but one of its own
fixed set. We name the one whose splits equal ours on a probe text covering what the rules differ on
(capitalised contractions, digit runs, newline and space runs, punctuation runs, CJK, emoji) and refuse a
tokenizer none of them matches, rather than write a file that would tokenize differently.
SentencePiece (Llama 2, Gemma) is written as llama.cpp's `llama` model: pieces, scores and piece types.

Neither kind adds a BOS token to plain text, as our encoders do not: a chat style that wants one (llama3,
gemma) writes it in its template, so llama.cpp and we tokenize every prompt to the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers.bpe import GPT2_PATTERN, BPETokenizer
from scratchllm.tokenizers.formats import LLAMA3_PATTERN, bpe_merges, byte_level_text
from scratchllm.tokenizers.sentencepiece import SentencePieceTokenizer

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Qwen2/Qwen3's pre-tokenizer: GPT-4's rules with every digit on its own.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# llama.cpp's pre-tokenizer names -> the rules it applies under them
LLAMA_CPP_PRE = {"gpt-2": GPT2_PATTERN, "llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}
PROBE = (
    "I DON'T know, you'LL see: it's 1234567 or 3.14159!\n\n\n  x = [a+b]*2;  \t\n"
    "    def f(n):\n        return n**2  # ok?!...\r\n"
    "中文字符 日本語 한국어 emoji 🦙🎉👍🏽 naïve café — “quotes” $100,000.00 ...\n \n"
)


@dataclass
class GGUFVocab:
    model: str  # llama.cpp's tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # its pre-tokenizer name
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / eot / unk / pad -> id
    add_space_prefix: bool | None = None


def gguf_vocab(tokenizer, vocab_size: int, stop_ids: tuple[int, ...] = ()) -> GGUFVocab:
    """`tokenizer` as llama.cpp's vocabulary of `vocab_size` rows (the model's embedding rows; ids the
    tokenizer does not use become unused `[PADn]` tokens, as llama.cpp's own converter writes them).

    `stop_ids` are the ids generation stops at: the one that is not end-of-text becomes the end-of-turn id.
    """
    if isinstance(tokenizer, BPETokenizer):
        vocab = _bpe_vocab(tokenizer)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        vocab = _sentencepiece_vocab(tokenizer)
    else:
        raise ScratchLLMError(f"convert --to gguf: a {type(tokenizer).__name__} cannot be written to GGUF")
    if len(vocab.tokens) > vocab_size:
        raise ScratchLLMError(f"convert --to gguf: the tokenizer has {len(vocab.tokens)} tokens but the model only "
                              f"{vocab_size} embedding rows")  # fmt: skip
    for i in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores:
            vocab.scores.append(-1000.0)
    eos = tokenizer.eot_id
    turn_ends = [i for i in stop_ids if i != eos]
    if eos is not None:
        vocab.special_ids.setdefault("bos", eos)  # GPT-2's convention: one <|endoftext|> for both
        vocab.special_ids["eos"] = eos
    if turn_ends:
        vocab.special_ids["eot"] = turn_ends[0]
    return vocab


def _bpe_vocab(tokenizer: BPETokenizer) -> GGUFVocab:
    size = max([*tokenizer.ranks.values(), *tokenizer.special_tokens.values()]) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [UNUSED] * size
    for token, i in tokenizer.ranks.items():
        tokens[i], types[i] = byte_level_text(token), NORMAL
    for text, i in tokenizer.special_tokens.items():
        tokens[i], types[i] = text, CONTROL
    merges = [f"{byte_level_text(a)} {byte_level_text(b)}" for a, b in bpe_merges(tokenizer)]
    special_ids = {}
    if "<|begin_of_text|>" in tokenizer.special_tokens:
        special_ids["bos"] = tokenizer.special_tokens["<|begin_of_text|>"]
    return GGUFVocab("gpt2", pre_tokenizer_name(tokenizer), tokens, types, merges, special_ids=special_ids)


def pre_tokenizer_name(tokenizer: BPETokenizer) -> str:
    """The llama.cpp pre-tokenizer that cuts text as `tokenizer.pattern` does."""
    ours = regex.findall(tokenizer.pattern, PROBE)
    for name, pattern in LLAMA_CPP_PRE.items():
        if regex.findall(pattern, PROBE) == ours:
            return name
    raise ScratchLLMError(f"convert --to gguf: tokenizer {tokenizer.name!r} splits text by a regex none of "
                          f"llama.cpp's pre-tokenizers ({', '.join(LLAMA_CPP_PRE)}) applies")  # fmt: skip


def _sentencepiece_vocab(tokenizer: SentencePieceTokenizer) -> GGUFVocab:
    sp = tokenizer.sp
    tokens, types, scores = [], [], []
    for i in range(sp.GetPieceSize()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            types.append(UNKNOWN)
        elif sp.IsControl(i):
            types.append(CONTROL)
        elif sp.IsByte(i):
            types.append(BYTE)
        elif sp.IsUnused(i):
            types.append(UNUSED)
        else:
            types.append(USER_DEFINED if tokens[-1] in tokenizer.special_tokens else NORMAL)
    special_ids = {name: i for name, i in (("bos", sp.bos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id()))
                   if i >= 0}  # fmt: skip
    # whether the model prepends "▁" to text (Llama 2 does, Gemma does not)
    add_space_prefix = sp.EncodeAsPieces("a")[0].startswith("\u2581")
    return GGUFVocab("llama", "default", tokens, types, scores=scores, special_ids=special_ids,
                     add_space_prefix=add_space_prefix)  # fmt: skip
