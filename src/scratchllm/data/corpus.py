"""Finding and reading the text a model is trained on.

Design: a corpus is an ordered list of files. With no argument it is the embedded default, the Python
standard library's own source (about 12 MB of `.py` files, present wherever Python is, so the main job
runs offline); test suites and `site-packages` are left out. The book's short story ships with the package
and is named `the-verdict`. A user corpus is one flag away: a file, a folder (every text file below it,
hidden entries skipped) or a glob; a local path always wins over a name. Files are read as UTF-8; a file that
is not gets an error naming it and the byte offset, instead of silently training on mojibake.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

from scratchllm.assets import NAMED_CORPORA
from scratchllm.errors import ScratchLLMError

DEFAULT_CORPUS = "python-stdlib"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_BINARY_SNIFF = 8192


def default_corpus_files() -> list[Path]:
    """Every `.py` file of this interpreter's standard library, test suites excluded, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(folder) / n for n in sorted(names) if n.endswith(".py"))
    if not files:
        raise ScratchLLMError(f"the default corpus is empty: no .py files under {root}")
    return files


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" not in f.read(_BINARY_SNIFF)


def corpus_files(spec: str | Path | None = None) -> list[Path]:
    """Resolve a corpus spec (None = default, a name, a file, a folder or a glob) to a sorted list of files."""
    if spec is None or str(spec) == DEFAULT_CORPUS:
        return default_corpus_files()
    path = Path(spec)
    if not path.exists() and str(spec) in NAMED_CORPORA:
        return [NAMED_CORPORA[str(spec)]]
    if path.is_file():
        return [path]
    if path.is_dir():
        files = []
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            files.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
        files = [f for f in files if _is_text(f)]
        if not files:
            raise ScratchLLMError(f"{path}: folder holds no text files")
        return files
    matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
    if not matches:
        raise ScratchLLMError(
            f"--data {spec}: no such file or folder, the glob matches nothing, and it is not a named corpus "
            f"({', '.join([DEFAULT_CORPUS, *NAMED_CORPORA])})"
        )
    return matches


def corpus_name(spec: str | Path | None) -> str:
    """A short, filesystem-safe name for a corpus, used for cache folders."""
    if spec is None or str(spec) == DEFAULT_CORPUS:
        return DEFAULT_CORPUS
    stem = Path(str(spec).rstrip("/*")).name or "corpus"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def read_text(path: Path) -> str:
    """Read a UTF-8 file (a leading BOM is dropped); a file in another encoding is a clear error."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ScratchLLMError(
            f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); convert it to UTF-8"
        ) from None
