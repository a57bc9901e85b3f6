"""Small file helpers shared by every package (no torch here, so tokenizers and the CLI stay light)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scratchllm.errors import ScratchLLMError


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then move the finished file to `path` (fsynced, same-folder rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path):
    """Parse a JSON file, with one-line errors naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScratchLLMError(f"{path}: malformed JSON ({e})") from None
