"""Tokenize a corpus once into a compact on-disk token file (`scratchllm prepare`).

Layout of a prepared folder:
    tokens.bin                    all token ids, uint16 when the vocabulary fits, else uint32
    meta.json                     counts, dtype, the train/validation boundary, source, cache key
    scratchllm-tokenizer.json     the tokenizer that produced the ids (so the folder is self-contained)

Decisions: documents are shuffled with a fixed seed, joined with `<|endoftext|>`, and streamed to disk in
batches, so a corpus of several GB never sits in a Python list. The split is a single boundary in the
token stream, moved to the next document start so no file straddles train and validation (a one-file
corpus such as the-verdict is split inside, as the book does). `meta.json` carries a key made from the
files' names, sizes and modification times, the tokenizer and the split settings; re-running on an
unchanged corpus returns the existing folder at once.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scratchllm.data.corpus import read_text
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write
from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.tokenizers.formats import OUR_FILE

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
OWN_FILES = (TOKENS_FILE, META_FILE, OUR_FILE, TOKENS_FILE + ".tmp")  # what a prepared folder holds
_BATCH_CHARS = 4 << 20  # text handed to the tokenizer's threads at once
_MAX_DOC_CHARS = 16 << 20  # longer files are read and encoded in pieces cut at line starts


@dataclass
class PreparedMeta:
    key: str
    dtype: str
    n_tokens: int
    val_start: int
    n_documents: int
    n_characters: int
    vocab_size: int
    tokenizer: str
    source: str

    @property
    def n_train(self) -> int:
        return self.val_start

    @property
    def n_val(self) -> int:
        return self.n_tokens - self.val_start


@dataclass
class PreparedData:
    """An opened prepared folder: memory-mapped train and validation token arrays."""

    folder: Path
    meta: PreparedMeta

    @property
    def tokens(self) -> np.ndarray:
        return np.memmap(self.folder / TOKENS_FILE, dtype=self.meta.dtype, mode="r", shape=(self.meta.n_tokens,))

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.meta.val_start]

    @property
    def val(self) -> np.ndarray:
        return self.tokens[self.meta.val_start :]

    def tokenizer(self) -> BPETokenizer:
        return BPETokenizer.load(self.folder / OUR_FILE)


def cache_key(files: list[Path], tokenizer: BPETokenizer, val_fraction: float, seed: int) -> str:
    h = hashlib.sha256(f"{tokenizer.fingerprint()}|{val_fraction}|{seed}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def is_prepared_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / META_FILE).exists() and (folder / TOKENS_FILE).exists()


def open_prepared(folder: str | Path) -> PreparedData:
    folder = Path(folder)
    meta_path = folder / META_FILE
    try:
        meta = PreparedMeta(**json.loads(meta_path.read_text()))
    except FileNotFoundError:
        raise ScratchLLMError(
            f"{folder}: not a prepared data folder (no {META_FILE}); run `scratchllm prepare`"
        ) from None
    except (json.JSONDecodeError, TypeError) as e:
        raise ScratchLLMError(f"{meta_path}: malformed ({e})") from None
    size = (folder / TOKENS_FILE).stat().st_size if (folder / TOKENS_FILE).exists() else -1
    if size != meta.n_tokens * np.dtype(meta.dtype).itemsize:
        raise ScratchLLMError(f"{folder / TOKENS_FILE}: size {size} does not match {meta.n_tokens} tokens in meta.json")
    return PreparedData(folder, meta)


def _pieces(path: Path):
    """A file's text, cut at line starts when it is very long (tokenization may differ at the cuts)."""
    text = read_text(path)
    while len(text) > _MAX_DOC_CHARS:
        cut = text.find("\n", _MAX_DOC_CHARS) + 1 or len(text)
        yield text[:cut]
        text = text[cut:]
    yield text


def prepare_corpus(
    files: list[Path],
    tokenizer: BPETokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    seed: int = 0,
    source: str = "",
    progress: bool = True,
) -> PreparedData:
    """Tokenize `files` into `out_dir` (reused if already prepared from the same inputs)."""
    if not 0 <= val_fraction < 1:
        raise ScratchLLMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    key = cache_key(files, tokenizer, val_fraction, seed)
    try:
        existing = open_prepared(out_dir)
        if existing.meta.key == key:
            return existing
    except ScratchLLMError:
        pass
    out_dir.mkdir(parents=True, exist_ok=True)
    order = list(files)
    random.Random(seed).shuffle(order)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    eot = tokenizer.eot_id
    doc_starts: list[int] = []
    n_tokens = n_chars = 0
    tmp = out_dir / (TOKENS_FILE + ".tmp")
    from tqdm import tqdm

    total_bytes = sum(f.stat().st_size for f in order)
    with (
        open(tmp, "wb") as out,
        tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar,
    ):
        batch: list[str] = []
        starts: list[bool] = []  # whether each batch entry begins a document
        batch_chars = 0

        def flush():
            nonlocal n_tokens, batch, starts, batch_chars
            for ids, is_start in zip(tokenizer.encode_batch(batch), starts):
                if is_start:
                    if eot is not None and n_tokens:
                        np.asarray([eot], dtype=dtype).tofile(out)
                        n_tokens += 1
                    doc_starts.append(n_tokens)
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
            batch, starts, batch_chars = [], [], 0

        for path in order:
            for i, piece in enumerate(_pieces(path)):
                batch.append(piece)
                starts.append(i == 0)
                batch_chars += len(piece)
                n_chars += len(piece)
                if batch_chars >= _BATCH_CHARS:
                    flush()
            bar.update(path.stat().st_size)
        flush()
    if n_tokens < 2:
        tmp.unlink(missing_ok=True)
        raise ScratchLLMError(f"corpus {source or files[0]} produced {n_tokens} tokens; need at least 2")
    val_start = n_tokens
    if val_fraction > 0:
        target = int(n_tokens * (1 - val_fraction))
        later = [s for s in doc_starts if s >= target]
        # Prefer a document boundary unless it would leave validation nearly empty.
        val_start = later[0] if later and n_tokens - later[0] >= 0.5 * (n_tokens - target) else target
    tmp.replace(out_dir / TOKENS_FILE)
    tokenizer.save(out_dir / OUR_FILE)
    meta = PreparedMeta(
        key=key,
        dtype=np.dtype(dtype).name,
        n_tokens=n_tokens,
        val_start=val_start,
        n_documents=len(order),
        n_characters=n_chars,
        vocab_size=tokenizer.vocab_size,
        tokenizer=tokenizer.name,
        source=source,
    )
    text = json.dumps(asdict(meta), indent=2)
    atomic_write(out_dir / META_FILE, lambda tmp: tmp.write_text(text))
    return PreparedData(out_dir, meta)
