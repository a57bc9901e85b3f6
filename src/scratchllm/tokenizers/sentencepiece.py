"""SentencePiece tokenizers (Llama 2, Gemma 3) behind the same interface as `BPETokenizer`.

Llama 2 and Gemma ship a SentencePiece model (`tokenizer.model`, a protobuf file) rather than byte-level BPE
ranks, so we delegate encoding to the `sentencepiece` package and map its pieces to bytes for streaming:
"▁" is a space and `<0xNN>` pieces are raw bytes (byte fallback). `<s>` / `<bos>` is prepended by `encode`
when `add_bos=True`, as these models expect at the start of text.
Special tokens are the model's control pieces (`<bos>`, `<eos>`, `<pad>`) and its `<tag>`-shaped pieces
(Gemma's `<start_of_turn>`, `<end_of_turn>`): text is cut at the allowed ones first, as HF tokenizers cut
at added tokens, so a rendered chat prompt encodes each marker as its one id.
"""

from __future__ import annotations

import re
from pathlib import Path

from scratchllm.errors import ScratchLLMError


def is_sentencepiece_file(path: Path) -> bool:
    """A tiktoken rank file is base64 text; a SentencePiece model is binary protobuf."""
    head = Path(path).read_bytes()[:64]
    return b"\x00" in head or not all(
        c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n\r" for c in head
    )


_TAG = re.compile(r"<[^<>\s]+>")


class SentencePieceTokenizer:
    def __init__(self, path: str | Path, name: str | None = None):
        try:
            import sentencepiece
        except ImportError:
            raise ScratchLLMError(
                "SentencePiece tokenizers (Llama 2, Gemma) need the sentencepiece package: pip install sentencepiece"
            ) from None
        self.path = Path(path)
        self.name = name or self.path.parent.name
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ScratchLLMError(f"{path}: not a SentencePiece model ({e})") from None
        sp = self.sp
        self.special_tokens = {
            sp.IdToPiece(i): i for i in range(sp.GetPieceSize())
            if sp.IsControl(i) or (_TAG.fullmatch(sp.IdToPiece(i)) and not (sp.IsByte(i) or sp.IsUnknown(i)))
        }  # fmt: skip
        self.pattern = ""

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def eot_id(self) -> int | None:
        return self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str, allowed_special=(), add_bos: bool = False) -> list[int]:
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        ids = [self.sp.bos_id()] if add_bos else []
        start = 0
        if allowed:
            for match in _TAG.finditer(text):
                if match.group() in allowed:
                    ids += self.sp.EncodeAsIds(text[start : match.start()]) if match.start() > start else []
                    ids.append(self.special_tokens[match.group()])
                    start = match.end()
        return ids + self.sp.EncodeAsIds(text[start:]) if start < len(text) else ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: list[str], num_threads: int = 4) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.sp.IdToPiece(int(token_id))
        if self.sp.IsByte(int(token_id)):
            return bytes([int(piece[3:-1], 16)])
        if self.sp.IsControl(int(token_id)) or self.sp.IsUnknown(int(token_id)):
            return b""
        return piece.replace("\u2581", " ").encode("utf-8")

    def save(self, path: str | Path) -> Path:
        import shutil

        shutil.copy(self.path, path)
        return Path(path)
