"""Data pipeline: sliding windows (book figures), corpus resolution, prepared token files, `prepare`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from scratchllm.cli.main import main
from scratchllm.data.corpus import corpus_files, default_corpus_files, read_text
from scratchllm.data.dataset import SlidingWindowDataset, create_dataloader, create_dataloader_from_text
from scratchllm.data.pipeline import PrepareOptions, prepare_data
from scratchllm.data.prepare import open_prepared
from scratchllm.errors import ScratchLLMError


def test_book_first_batch(gpt2_tokenizer, verdict_text):
    loader = create_dataloader_from_text(
        verdict_text, gpt2_tokenizer, batch_size=1, max_length=4, stride=1, shuffle=False
    )
    x, y = next(iter(loader))
    assert x.tolist() == [[40, 367, 2885, 1464]]
    assert y.tolist() == [[367, 2885, 1464, 1807]]
    loader = create_dataloader_from_text(
        verdict_text, gpt2_tokenizer, batch_size=8, max_length=4, stride=4, shuffle=False
    )
    x, y = next(iter(loader))
    assert x.shape == (8, 4) and torch.equal(x[1], torch.tensor([1807, 3619, 402, 271]))
    with pytest.raises(ScratchLLMError, match="stride must be >= 1"):  # 0 is refused, not read as "the default"
        create_dataloader(list(range(20)), max_length=4, stride=0)


@pytest.mark.parametrize("n,length,stride", [(10, 4, 1), (10, 4, 4), (11, 4, 3), (5, 4, 1), (4, 4, 1), (100, 7, 5)])
def test_windows_shift_by_one(n, length, stride):
    ids = np.arange(1000, 1000 + n)
    ds = SlidingWindowDataset(ids, length, stride)
    # Same count as the book's `range(0, len(ids) - max_length, stride)`.
    assert len(ds) == len(range(0, n - length, stride))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == list(range(1000 + i * stride, 1000 + i * stride + length))
        assert y.tolist() == [t + 1 for t in x.tolist()]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_options():
    ids = list(range(103))
    loader = create_dataloader(ids, batch_size=4, max_length=10, stride=10, shuffle=True, drop_last=True, seed=1)
    batches = list(loader)
    assert len(batches) == 2  # 10 windows, last partial batch dropped
    again = [x for x, _ in create_dataloader(ids, batch_size=4, max_length=10, shuffle=True, seed=1)]
    assert all(torch.equal(a[0], b) for a, b in zip(batches, again))
    assert len(list(create_dataloader(ids, batch_size=4, max_length=10, drop_last=False))) == 3


def test_default_corpus_is_stdlib_source():
    files = default_corpus_files()
    names = {f.name for f in files}
    assert "os.py" in names and "functools.py" in names
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)
    assert sum(f.stat().st_size for f in files) > 5_000_000


def test_corpus_specs_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert [f.name for f in corpus_files(tmp_path)] == ["a.txt", "latin1.txt", "b.md"]
    assert [f.name for f in corpus_files(str(tmp_path / "**" / "*.md"))] == ["b.md"]
    with pytest.raises(ScratchLLMError, match="latin1.txt.*not UTF-8.*offset 3"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(ScratchLLMError, match="no such file"):
        corpus_files(tmp_path / "missing")


def test_prepare_roundtrip_and_reuse(tmp_path, gpt2_tokenizer):
    docs = {f"doc{i}.txt": f"Document number {i}. " * (20 + i) for i in range(12)}
    for name, text in docs.items():
        (tmp_path / name).write_text(text)
    opts = PrepareOptions(data=str(tmp_path), tokenizer="train", vocab_size=300, out=str(tmp_path / "out"))
    prepared = prepare_data(opts, progress=False)
    meta = prepared.meta
    assert meta.n_documents == 12 and meta.dtype == "uint16"
    assert 0 < meta.val_start < meta.n_tokens
    tok = prepared.tokenizer()
    decoded = tok.decode(prepared.tokens.tolist()).split("<|endoftext|>")
    assert sorted(decoded) == sorted(docs.values())
    # The split falls on a document boundary: validation starts right after an <|endoftext|>.
    assert prepared.tokens[meta.val_start - 1] == tok.eot_id
    assert len(prepared.train) + len(prepared.val) == meta.n_tokens
    mtime = os.stat(prepared.folder / "tokens.bin").st_mtime_ns
    again = prepare_data(opts, progress=False)
    assert os.stat(again.folder / "tokens.bin").st_mtime_ns == mtime  # reused, not rewritten
    (tmp_path / "doc0.txt").write_text("changed " * 50)
    changed = prepare_data(opts, progress=False)
    assert changed.meta.key != meta.key


def test_prepare_single_file_with_gpt2(tmp_path):
    from .conftest import GPT2_BPE, VERDICT

    opts = PrepareOptions(data=str(VERDICT), tokenizer=str(GPT2_BPE), out=str(tmp_path / "v"))
    prepared = prepare_data(opts, progress=False)
    assert prepared.meta.n_tokens == 5145
    assert prepared.meta.val_start == int(5145 * 0.9)  # one document: split inside it, as the book does
    assert prepared.tokens[:4].tolist() == [40, 367, 2885, 1464]


def test_vocabulary_above_65536_is_stored_as_uint32(tmp_path, gpt2_tokenizer):
    """Llama 3's 128k ids do not fit uint16: the token file widens, and ids above 65,535 survive."""
    from scratchllm.data.prepare import prepare_corpus
    from scratchllm.tokenizers import BPETokenizer

    wide = BPETokenizer(dict(gpt2_tokenizer.ranks), {"<|endoftext|>": 128_255}, gpt2_tokenizer.pattern, "wide")
    docs = [tmp_path / f"d{i}.txt" for i in range(4)]
    for i, d in enumerate(docs):
        d.write_text(f"document {i} " * 10)
    prepared = prepare_corpus(docs, wide, tmp_path / "out", val_fraction=0.25, progress=False)
    assert prepared.meta.dtype == "uint32" and prepared.tokens.dtype == "uint32"
    tokens = prepared.tokens.tolist()
    assert tokens.count(128_255) == 3  # the separators between 4 documents, not wrapped to 62,719
    assert sorted(wide.decode(tokens).split("<|endoftext|>")) == sorted(d.read_text() for d in docs)
    assert open_prepared(tmp_path / "out").tokens.tolist() == tokens  # read back from disk with its dtype


def test_open_prepared_errors(tmp_path):
    with pytest.raises(ScratchLLMError, match="not a prepared data folder"):
        open_prepared(tmp_path)


def test_prepare_cli(tmp_path, capsys):
    from .conftest import VERDICT

    out = tmp_path / "p"
    assert main(["prepare", "--data", str(VERDICT), "--vocab-size", "400", "--data-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vocab 400" in text and "train" in text
    assert open_prepared(out).meta.vocab_size == 400
    assert main(["prepare", "--data", str(tmp_path / "nothing-here")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_is_fast_and_lists_verbs():
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "scratchllm", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert "prepare" in out.stdout and "tokenizer" in out.stdout
    # --help must not import torch (that alone takes seconds); check the import, not the clock.
    probe = "import sys; from scratchllm.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    assert elapsed < 30
