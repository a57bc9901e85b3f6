"""Small file helpers shared by every package (no torch here, so tokenizers and the CLI stay light)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scratchllm.errors import ScratchLLMError


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then move the finished file to `path` (fsynced, same-folder rename).

    The file gets the permissions a plain `open` would give it under the user's umask, whatever the writer
    used (safetensors creates its files 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (no window for other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (a leading byte-order mark, as Windows editors write, is dropped), with one-line errors
    naming it."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ScratchLLMError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ScratchLLMError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: str | Path):
    """Parse a JSON file, with one-line errors naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScratchLLMError(f"{path}: malformed JSON ({e})") from None


# -- outputs: nothing a user already has is replaced without --overwrite ---------------------------------------


def _check_writable(path: Path) -> None:
    """The nearest existing folder at or above `path` must be a writable folder."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ScratchLLMError(f"{path}: cannot create it, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ScratchLLMError(f"{path}: no permission to write in {probe}")


def refuse_overlap(out: str | Path, out_flag: str, inputs: dict[str, str | Path | None]) -> None:
    """No output may be, contain or sit inside one of the command's inputs (`--overwrite` would destroy it, and
    writing beside it mixes the two). `inputs` maps flags to paths; names that are no local path are skipped."""
    target = Path(out).resolve()
    for flag, spec in inputs.items():
        if spec is None or not Path(spec).exists():
            continue
        source = Path(spec).resolve()
        how = ("is" if target == source else "contains" if target in source.parents
               else "sits inside" if source in target.parents else None)  # fmt: skip
        if how:
            raise ScratchLLMError(f"{out_flag} {out}: {how} {flag} {spec}, an input of this command; choose another "
                                  f"{out_flag}")  # fmt: skip


def claim_output_file(path: str | Path, overwrite: bool) -> Path:
    """Check that `path` may be written: absent (or `overwrite`), not a folder, in a writable place."""
    path = Path(path)
    if path.is_dir():
        raise ScratchLLMError(f"{path}: is a folder; expected a file to write")
    if path.exists() and not overwrite:
        raise ScratchLLMError(f"{path} already exists; pass --overwrite to replace it")
    _check_writable(path.parent)
    return path


def claim_output_folder(path: str | Path, overwrite: bool, what: str = "output folder") -> bool:
    """Check that `path` may receive a new `what`; True when it holds something that will be replaced.

    Absent or empty folders are free. A non-empty one needs `overwrite`, and even then never the current
    folder, one of its parents, or the home folder (a typo there would delete far more than a run).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ScratchLLMError(f"{path}: is a file; expected a folder for the {what}")
    _check_writable(path)
    if not path.is_dir() or not any(path.iterdir()):
        return False
    if not overwrite:
        raise ScratchLLMError(f"{path} is not empty; pass --overwrite to replace it with the {what}, or choose another")
    resolved = path.resolve()
    if resolved in (Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve()):
        raise ScratchLLMError(f"{path}: refusing to replace the current folder, a parent of it or the home folder")
    return True


def replace_folder(path: str | Path, build) -> Path:
    """Call `build(tmp)` to fill a temporary sibling folder, then swap it in for `path` as a whole.

    Until the swap the old folder is untouched; an error or Ctrl-C in `build` leaves it as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path
