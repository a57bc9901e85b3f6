"""BPE training: same merges as a naive full-recount trainer, round-trips, determinism, CLI."""

from __future__ import annotations

from collections import Counter

import pytest
import regex

from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import BPETokenizer, train_bpe
from scratchllm.tokenizers.bpe import GPT2_PATTERN, GPT4_PATTERN

from .conftest import VERDICT, shared_file


def naive_train(text: str, vocab_size: int, pattern: str) -> dict[bytes, int]:
    """The textbook algorithm: recount every pair after every merge (slow, obviously right)."""
    words = Counter(tuple(t.encode()) for t in regex.findall(pattern, text))
    vocab = {i: bytes([i]) for i in range(256)}
    ids = {b: i for i, b in vocab.items()}
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        token = vocab[best[0]] + vocab[best[1]]
        new = ids.setdefault(token, len(vocab))
        vocab[new] = token
        merged = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return ids


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_incremental_trainer_equals_naive(verdict_text, pattern):
    text = verdict_text[:6000]
    tok = train_bpe([text], 256 + 150 + 1, pattern, progress=False)
    assert tok.ranks == naive_train(text, 256 + 150, pattern)
    assert tok.special_tokens == {"<|endoftext|>": 406}


def test_trained_tokenizer_roundtrips_any_text(tmp_path, verdict_text):
    tok = train_bpe([verdict_text, shared_file("small-text-sample.txt").read_text()], 600, progress=False)
    assert tok.vocab_size == 600
    for text in [verdict_text, "unseen: ünïcödé 日本 🤖 \x00\x01 \t\n", "", "<|endoftext|> is plain here"]:
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        if "<|" not in text:
            assert ids == tok.encode_reference(text)
    assert len(tok.encode(verdict_text)) < len(verdict_text.encode()) / 2  # it actually compresses
    loaded = BPETokenizer.load(tok.save(tmp_path / "t.json"))
    assert loaded.encode(verdict_text) == tok.encode(verdict_text)


def test_training_is_deterministic_across_workers(verdict_text):
    texts = [verdict_text] * 3
    a = train_bpe(texts, 400, progress=False, workers=1)
    b = train_bpe(texts, 400, progress=False, workers=2)
    assert a.ranks == b.ranks


def test_vocab_too_small():
    with pytest.raises(ScratchLLMError, match="too small"):
        train_bpe(["abc"], 200, progress=False)


def test_tokenizer_cli(tmp_path, capsys):
    corpus = VERDICT
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "500", "--out", str(out)]) == 0
    assert main(["tokenizer", "encode", str(out), "Every effort moves you"]) == 0
    ids = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["tokenizer", "decode", str(out), ids]) == 0
    assert capsys.readouterr().out.strip() == "Every effort moves you"
    assert main(["tokenizer", "info", str(out)]) == 0
    assert "vocab_size    500" in capsys.readouterr().out
    assert main(["tokenizer", "info", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
