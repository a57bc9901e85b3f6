"""Hub names for `--checkpoint` and `scratchllm download`: fetched once into the cache, then offline.

Short names map to the official repositories (`gpt2` -> openai-community/gpt2, `llama3.2-1b` ->
meta-llama/Llama-3.2-1B, `qwen3-0.6b` -> Qwen/Qwen3-0.6B, ...), each family file listing its own; any other
`owner/name` is taken as a hub repository id. Llama and Gemma repositories are gated: accept the licence on the
hub and set HF_TOKEN.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.hub import download_file, hub_file_url, repo_dir
from scratchllm.models.families import HUB_NAMES

# Tried in order; the first weights file found decides the layout.
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model"]


def resolve_repo(name: str) -> str | None:
    """Hub repository id for a short name or an `owner/name` id; None when `name` is neither."""
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/")):
        return name
    return None


def cached_folder(repo_id: str) -> Path | None:
    """The cache folder if a previous download completed (its marker file exists)."""
    folder = repo_dir(repo_id)
    return folder if (folder / ".complete").exists() else None


def download_model(name: str, progress: bool = True) -> Path:
    """Download config, weights (single or sharded safetensors) and tokenizer files of a hub model."""
    repo = resolve_repo(name)
    if repo is None:
        raise ScratchLLMError(f"{name!r} is not a known hub name ({', '.join(HUB_NAMES)}) nor an owner/name id")
    if (folder := cached_folder(repo)) is not None:
        return folder
    folder = repo_dir(repo)
    download_file(hub_file_url(repo, "config.json"), folder / "config.json", progress=progress)
    try:
        download_file(hub_file_url(repo, "model.safetensors"), folder / "model.safetensors", progress=progress)
    except ScratchLLMError:
        index = download_file(hub_file_url(repo, "model.safetensors.index.json"),
                              folder / "model.safetensors.index.json", progress=progress)  # fmt: skip
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            download_file(hub_file_url(repo, shard), folder / shard, progress=progress)
    for name_ in _TOKENIZER_FILES:
        try:
            download_file(hub_file_url(repo, name_), folder / name_, progress=progress)
        except ScratchLLMError:
            continue  # each model ships only some of these
    (folder / ".complete").write_text(repo)
    return folder
