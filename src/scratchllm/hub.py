"""Downloads from the HuggingFace hub into a local cache, with a progress bar.

Design: plain `urllib` (no extra dependency), one file at a time, written to `NAME.part` and renamed when
complete so an interrupted download never leaves a file that looks finished. The cache lives in
`$SCRATCHLLM_CACHE` or `~/.cache/scratchllm`. Tests exercise the path logic offline; the network calls
only run for users who ask for a hub name.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from scratchllm.errors import ScratchLLMError

HUB_URL = "https://huggingface.co"


def cache_dir() -> Path:
    """Root of scratchllm's download cache (override with SCRATCHLLM_CACHE)."""
    return Path(os.environ.get("SCRATCHLLM_CACHE", Path.home() / ".cache" / "scratchllm"))


def repo_dir(repo_id: str) -> Path:
    """Cache folder of one hub repository, e.g. `openai-community/gpt2` -> `.../hub/openai-community--gpt2`."""
    if not repo_id or repo_id.count("/") > 1 or ".." in repo_id:
        raise ScratchLLMError(f"invalid hub repository id {repo_id!r} (expected 'owner/name' or 'name')")
    return cache_dir() / "hub" / repo_id.replace("/", "--")


def hub_file_url(repo_id: str, filename: str, revision: str = "main") -> str:
    return f"{HUB_URL}/{repo_id}/resolve/{revision}/{filename}"


def download_file(url: str, dest: Path, token: str | None = None, progress: bool = True) -> Path:
    """Fetch `url` to `dest` unless it is already there; atomic via a `.part` file."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    headers = {"User-Agent": "scratchllm"}
    token = token or os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm

            with (
                open(part, "wb") as f,
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        hint = " (gated model: set HF_TOKEN)" if e.code in (401, 403) else ""
        raise ScratchLLMError(f"download of {url} failed: HTTP {e.code}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise ScratchLLMError(f"download of {url} failed: {e} (are you online?)") from None
    part.replace(dest)
    return dest


def download_repo_files(repo_id: str, filenames: list[str], progress: bool = True) -> Path:
    """Download `filenames` of a hub repository into its cache folder and return the folder."""
    folder = repo_dir(repo_id)
    for name in filenames:
        download_file(hub_file_url(repo_id, name), folder / name, progress=progress)
    return folder
