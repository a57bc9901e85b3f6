"""Llama 2's SentencePiece tokenizer behind the same interface as `BPETokenizer`.

Llama 2 ships a SentencePiece model (`tokenizer.model`, a protobuf file) rather than byte-level BPE
ranks, so we delegate encoding to the `sentencepiece` package (installed on demand: `pip install
sentencepiece`) and map its pieces to bytes for streaming: "▁" is a space and `<0xNN>` pieces are raw
bytes. `<s>` (BOS) is prepended by `encode` when `add_bos=True`, as Llama 2 expects at the start of text.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import ScratchLLMError


def is_sentencepiece_file(path: Path) -> bool:
    """A tiktoken rank file is base64 text; a SentencePiece model is binary protobuf."""
    head = Path(path).read_bytes()[:64]
    return b"\x00" in head or not all(
        c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n\r" for c in head
    )


class SentencePieceTokenizer:
    def __init__(self, path: str | Path, name: str | None = None):
        try:
            import sentencepiece
        except ImportError:
            raise ScratchLLMError(
                "Llama 2 tokenizers need the sentencepiece package: pip install sentencepiece"
            ) from None
        self.path = Path(path)
        self.name = name or self.path.parent.name
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ScratchLLMError(f"{path}: not a SentencePiece model ({e})") from None
        self.special_tokens = {self.sp.IdToPiece(i): i for i in (self.sp.bos_id(), self.sp.eos_id()) if i >= 0}
        self.pattern = ""

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def eot_id(self) -> int | None:
        return self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str, allowed_special=(), add_bos: bool = False) -> list[int]:
        ids = self.sp.EncodeAsIds(text)
        return [self.sp.bos_id()] + ids if add_bos else ids

    encode_ordinary = encode

    def encode_batch(self, texts: list[str], num_threads: int = 4) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.sp.IdToPiece(int(token_id))
        if self.sp.IsByte(int(token_id)):
            return bytes([int(piece[3:-1], 16)])
        if self.sp.IsControl(int(token_id)):
            return b""
        return piece.replace("\u2581", " ").encode("utf-8")

    def save(self, path: str | Path) -> Path:
        import shutil

        shutil.copy(self.path, path)
        return Path(path)
