"""Byte-level byte-pair encoding (book ch. 2.5), one interface for every vocabulary we use.

Design decisions:
- A vocabulary is a table of *ranks*: token bytes -> id, where a lower id means the pair was merged
  earlier. GPT-2's ids already have this property (its 256 byte tokens come first, then its 50,000 merges
  in order), so do the vocabularies our trainer writes and Llama 3's `tokenizer.model`. With ranks, the
  merge rule is "repeatedly merge the adjacent pair whose concatenation has the lowest rank", which is
  exactly what GPT-2's merges list means, without needing the list itself.
- Text is first cut into pre-tokens by a regex (GPT-2's or GPT-4's pattern) so merges never cross
  word/number/punctuation boundaries; special tokens such as `<|endoftext|>` are matched before that.
- Some vocabularies (Qwen's) normalise text to Unicode NFC before cutting it, so a decomposed "é" encodes as
  the composed one: `normalization="NFC"` does that in every encoder.
- Two encoders share the ranks: `encode` hands them to tiktoken's Rust core (fast, used everywhere),
  `encode_reference` is a short pure-Python version of the same algorithm kept for reading and for the
  tests that check both agree.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import Collection, Iterable
from functools import cached_property
from pathlib import Path
from typing import Literal

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (cl100k): case-insensitive contractions, digits in groups of at most three, newlines kept apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
END_OF_TEXT = "<|endoftext|>"
FORMAT = "scratchllm-bpe"

AllowedSpecial = Literal["all"] | Collection[str]


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Reference BPE on one pre-token: merge the lowest-ranked adjacent pair until none is in `ranks`."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


class BPETokenizer:
    """Byte-level BPE tokenizer: `encode`, `decode`, `vocab_size`, special tokens, `save`/`load`."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        name: str = "bpe",
        normalization: str | None = None,
    ):
        if normalization not in (None, "NFC"):
            raise ScratchLLMError(f"tokenizer {name!r}: normalization {normalization!r} is not supported (only NFC)")
        self.normalization = normalization
        self.ranks = ranks
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.name = name
        self.decoder: dict[int, bytes] = {i: b for b, i in ranks.items()}
        self.decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        if len(self.decoder) != len(ranks) + len(self.special_tokens):
            raise ScratchLLMError(f"tokenizer {name!r}: two tokens share one id")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ScratchLLMError(f"tokenizer {name!r}: byte {missing[0]:#04x} has no token (not byte-level)")
        self._special_re = (
            regex.compile("|".join(regex.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)))
            if self.special_tokens
            else None
        )

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding must cover (largest id + 1)."""
        return max(self.decoder) + 1

    @property
    def eot_id(self) -> int | None:
        """Id of `<|endoftext|>` (or the first special token), used to separate documents."""
        if END_OF_TEXT in self.special_tokens:
            return self.special_tokens[END_OF_TEXT]
        return next(iter(self.special_tokens.values()), None)

    @cached_property
    def _engine(self):
        import tiktoken

        return tiktoken.Encoding(
            name=self.name,
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=None,
        )

    # -- encoding -----------------------------------------------------------------------------------------
    def _allowed(self, text: str, allowed_special: AllowedSpecial) -> set[str]:
        """Resolve `allowed_special` and refuse special-token text that was not allowed, naming it."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ScratchLLMError(
                f"unknown special token {sorted(unknown)[0]!r}; this tokenizer has {sorted(self.special_tokens)}"
            )
        if self._special_re is not None:
            for match in self._special_re.finditer(text):
                if match.group() not in allowed:
                    raise ScratchLLMError(
                        f"text contains the special token {match.group()!r} at character {match.start()}; "
                        f"pass allowed_special={{{match.group()!r}}} to encode it as one token"
                    )
        return allowed

    def _normal(self, text: str) -> str:
        return unicodedata.normalize(self.normalization, text) if self.normalization else text

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Text -> ids. Special tokens in `text` are encoded as one id only if named in `allowed_special`."""
        text = self._normal(text)
        allowed = self._allowed(text, allowed_special)
        return self._engine.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special-token text as plain text (for corpora that may contain it)."""
        return self._engine.encode_ordinary(self._normal(text))

    def encode_batch(self, texts: list[str], num_threads: int = 4) -> list[list[int]]:
        """Encode many documents in parallel threads (the Rust core releases the GIL)."""
        return self._engine.encode_ordinary_batch([self._normal(t) for t in texts], num_threads=num_threads)

    def encode_reference(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Pure-Python encoder: same result as `encode`, readable, slow."""
        text = self._normal(text)
        allowed = self._allowed(text, allowed_special)
        pattern = regex.compile(self.pattern)
        ids: list[int] = []
        cache: dict[str, list[int]] = {}
        start = 0
        chunks: list[tuple[str, bool]] = []
        if self._special_re is not None:
            for match in self._special_re.finditer(text):
                if match.group() in allowed:
                    chunks.append((text[start : match.start()], False))
                    chunks.append((match.group(), True))
                    start = match.end()
        chunks.append((text[start:], False))
        for chunk, is_special in chunks:
            if is_special:
                ids.append(self.special_tokens[chunk])
                continue
            for piece in pattern.findall(chunk):
                if piece not in cache:
                    cache[piece] = bpe_merge(piece.encode("utf-8"), self.ranks)
                ids.extend(cache[piece])
        return ids

    # -- decoding -----------------------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self.decoder[int(i)] for i in ids)
        except KeyError as e:
            raise ScratchLLMError(f"token id {e.args[0]} is outside this tokenizer's vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; a byte sequence cut inside a UTF-8 character decodes to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.decoder[token_id]

    # -- persistence --------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Short content hash: two tokenizers with equal fingerprints encode identically."""
        import hashlib

        h = hashlib.sha256(self.pattern.encode())
        for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + token)
        h.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        if self.normalization:
            h.update(self.normalization.encode())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write one JSON file: pattern, special tokens and every token's bytes (base64) in id order."""
        path = Path(path)
        tokens = [None] * (max(self.ranks.values()) + 1)
        for token, rank in self.ranks.items():
            tokens[rank] = base64.b64encode(token).decode("ascii")
        data = {
            "format": FORMAT,
            "version": 1,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "normalization": self.normalization,
            "tokens": tokens,
        }
        text = json.dumps(data, ensure_ascii=False)
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScratchLLMError(f"{path}: cannot read tokenizer file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScratchLLMError(f"{path}: field 'format' should be {FORMAT!r}; not a scratchllm tokenizer file")
        try:
            ranks = {base64.b64decode(t): i for i, t in enumerate(data["tokens"]) if t is not None}
            return cls(ranks, data["special_tokens"], data["pattern"], data.get("name", path.stem),
                       data.get("normalization"))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ScratchLLMError(f"{path}: malformed tokenizer file ({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, specials={list(self.special_tokens)})"
