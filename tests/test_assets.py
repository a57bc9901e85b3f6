"""The files shipped in the package are the published ones, byte for byte (hashes from shared/data/SOURCES.md)."""

from __future__ import annotations

import hashlib

import pytest

from scratchllm.assets import ASSETS

# sha256 prefixes of the sources: OpenAI's GPT-2 vocabulary (the hashes tiktoken expects) and the book's story.
EXPECTED = {
    "gpt2/encoder.json": "196139668be63f3b",
    "gpt2/vocab.bpe": "1ce1664773c50f3e",
    "the-verdict.txt": "b41e41a68f0398a3",
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shipped_file_is_the_published_one(name):
    assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest()[:16] == EXPECTED[name]


def test_gpt2_licence_ships_beside_the_vocabulary():
    assert (ASSETS / "gpt2" / "LICENSE").read_text().startswith("MIT License")
