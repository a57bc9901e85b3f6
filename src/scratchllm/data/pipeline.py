"""The first stage of the product: corpus -> tokenizer -> token file, with caching at each step.

`prepare_data()` is what `scratchllm prepare` and `scratchllm pretrain` call. The tokenizer is either a
named/saved one (`gpt2`, a file, a folder) or trained on the corpus itself (the default: byte-level BPE,
GPT-4 pre-tokenization, 8,192 ids). A trained tokenizer is cached in the output folder together with a
key of the corpus files and training settings, so the second run skips training as well as tokenizing.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from scratchllm.data.corpus import corpus_files, corpus_name, read_text
from scratchllm.data.prepare import OWN_FILES, PreparedData, is_prepared_folder, open_prepared, prepare_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write
from scratchllm.tokenizers.bpe import PATTERNS, BPETokenizer
from scratchllm.tokenizers.formats import OUR_FILE, load_tokenizer
from scratchllm.tokenizers.train import train_bpe

DATA_ROOT = Path("data")
TRAIN = "train"  # tokenizer spec meaning "train a BPE vocabulary on this corpus"
_KEY_FILE = "tokenizer-key.txt"


@dataclass
class PrepareOptions:
    data: str | None = None  # None = the embedded default corpus
    tokenizer: str = TRAIN
    vocab_size: int = 8192
    pattern: str = "gpt4"
    out: str | None = None
    val_fraction: float = 0.1
    seed: int = 0


def options_from(settings) -> PrepareOptions:
    """PrepareOptions from anything with the same-named fields (CLI arguments, a PretrainConfig)."""
    return PrepareOptions(
        data=settings.data,
        tokenizer=settings.tokenizer,
        vocab_size=settings.vocab_size,
        pattern=settings.pattern,
        out=settings.data_out,
        val_fraction=settings.val_fraction,
    )


def default_out_dir(opts: PrepareOptions) -> Path:
    tag = f"bpe{opts.vocab_size}" if opts.tokenizer == TRAIN else Path(opts.tokenizer).name or "tok"
    return DATA_ROOT / f"{corpus_name(opts.data)}-{tag}"


def _tokenizer_key(files: list[Path], opts: PrepareOptions) -> str:
    h = hashlib.sha256(f"{opts.vocab_size}|{opts.pattern}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def get_tokenizer(files: list[Path], opts: PrepareOptions, out_dir: Path, progress: bool = True) -> BPETokenizer:
    """Load the requested tokenizer, or train one on `files` (reusing a cached one when unchanged)."""
    if opts.tokenizer != TRAIN:
        return load_tokenizer(opts.tokenizer)
    if opts.pattern not in PATTERNS:
        raise ScratchLLMError(f"--pattern {opts.pattern!r}: expected one of {sorted(PATTERNS)}")
    key = _tokenizer_key(files, opts)
    key_file, tok_file = out_dir / _KEY_FILE, out_dir / OUR_FILE
    if key_file.exists() and tok_file.exists() and key_file.read_text().strip() == key:
        return BPETokenizer.load(tok_file)
    name = f"{corpus_name(opts.data)}-bpe{opts.vocab_size}"
    tokenizer = train_bpe(
        (read_text(f) for f in files), opts.vocab_size, PATTERNS[opts.pattern], name=name, progress=progress
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tok_file)
    atomic_write(key_file, lambda tmp: tmp.write_text(key))
    return tokenizer


def _claim_data_dir(out_dir: Path, overwrite: bool) -> None:
    """A data folder may hold only what this stage writes; anything else is the user's (--overwrite)."""
    from scratchllm.files import claim_output_folder

    if out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {*OWN_FILES, _KEY_FILE}:
        return  # our own cache: reused or refreshed
    if claim_output_folder(out_dir, overwrite, "prepared data"):
        shutil.rmtree(out_dir)


def prepare_data(opts: PrepareOptions | None = None, progress: bool = True, overwrite: bool = False) -> PreparedData:
    """Run (or reuse) the whole data stage and return the opened token file.

    `opts.data` may also be a prepared folder itself: it is used as it is, with its own tokenizer.
    """
    opts = opts or PrepareOptions()
    if opts.data and is_prepared_folder(Path(opts.data)):
        return open_prepared(opts.data)
    out_dir = Path(opts.out) if opts.out else default_out_dir(opts)
    _claim_data_dir(out_dir, overwrite)
    # Never read our own outputs back as corpus text (an output folder inside a corpus folder).
    out_resolved = out_dir.resolve()
    files = [f for f in corpus_files(opts.data) if out_resolved not in f.resolve().parents]
    tokenizer = get_tokenizer(files, opts, out_dir, progress)
    return prepare_corpus(
        files,
        tokenizer,
        out_dir,
        opts.val_fraction,
        opts.seed,
        source=str(opts.data or "python-stdlib"),
        progress=progress,
    )
