"""Shared fixtures: the package's shipped GPT-2 vocabulary and story, GPT-2 tokenizers built offline from them,
and files of the repository's test data in ../shared/data (tests that need one skip where it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scratchllm.assets import ASSETS
from scratchllm.tokenizers.formats import bytes_to_unicode, from_openai_files

# The devices this machine has: tests that take the `device` fixture run once on each (cpu here; cpu and cuda
# on a GPU machine, where benchmarks/gpu_check.sh runs them with `-k cuda`).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# Byte-identical to ../shared/data/gpt2-bpe and the-verdict.txt (test_assets.py checks their hashes).
GPT2_BPE = ASSETS / "gpt2"
VERDICT = ASSETS / "the-verdict.txt"


def shared_file(name: str) -> Path:
    """A file of ../shared/data (CI has it; a plain clone does not, and the test is skipped there)."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not found: the repository's test data lives beside the clone in ../shared")
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return from_openai_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe")


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """tiktoken's own `gpt2` encoding, built from the same files without network access."""
    import tiktoken

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    encoder = json.loads((GPT2_BPE / "encoder.json").read_text())
    ranks = {bytes(decoder[c] for c in tok): i for tok, i in encoder.items() if tok != "<|endoftext|>"}
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


@pytest.fixture(scope="session")
def verdict_text() -> str:
    return VERDICT.read_text(encoding="utf-8")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device present: a test that takes it must put everything it creates there."""
    return request.param
