"""Training a byte-level BPE vocabulary from a corpus (our own trainer, no external library).

Algorithm and the decisions that make it fast enough in pure Python:
1. Pre-tokenize with the regex pattern and count *unique* pre-tokens. A 12 MB code corpus has ~2.7M
   pre-tokens but only ~64k distinct ones, so every later step works on the small table, weighting
   each word by its frequency. Pre-tokenization (the slowest part) runs in worker processes.
2. Count adjacent pairs once, remember which words contain each pair, and keep a max-heap of counts.
3. Each merge touches only the words that contain the chosen pair: subtract their old pairs, add the new
   ones, and push the changed counts on the heap. Stale heap entries are skipped when popped (lazy
   deletion), so no full recount ever happens.
Ties between equally frequent pairs go to the pair with the smaller ids, so training is deterministic.
Ids: 0-255 are the raw bytes, then one id per merge in order (id = rank), then the special tokens.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Iterable

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers.bpe import END_OF_TEXT, GPT4_PATTERN, BPETokenizer

_CHUNK_CHARS = 1 << 20


def _count_chunks(args: tuple[str, list[str]]) -> Counter:
    pattern, texts = args
    compiled = regex.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def count_pretokens(texts: Iterable[str], pattern: str, workers: int | None = None) -> Counter:
    """Frequency of every distinct pre-token in `texts` (documents are never merged across)."""
    chunks: list[str] = []
    for text in texts:
        # Long documents are cut at line starts so workers get even shares; a pre-token never spans
        # the cut because every pattern we use ends its whitespace runs before a non-space character.
        while len(text) > _CHUNK_CHARS:
            cut = text.find("\n", _CHUNK_CHARS)
            if cut < 0:
                break
            chunks.append(text[: cut + 1])
            text = text[cut + 1 :]
        chunks.append(text)
    workers = workers or min(os.cpu_count() or 1, 8)
    total = sum(len(c) for c in chunks)
    if workers == 1 or total < 4 * _CHUNK_CHARS:
        return _count_chunks((pattern, chunks))
    # Group small documents into ~1 MB jobs so process overhead stays negligible.
    jobs, current, size = [], [], 0
    for chunk in chunks:
        current.append(chunk)
        size += len(chunk)
        if size >= _CHUNK_CHARS:
            jobs.append((pattern, current))
            current, size = [], 0
    if current:
        jobs.append((pattern, current))
    import multiprocessing as mp

    counts = Counter()
    with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
        for part in pool.imap_unordered(_count_chunks, jobs):
            counts.update(part)
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = GPT4_PATTERN,
    special_tokens: Iterable[str] = (END_OF_TEXT,),
    name: str = "bpe",
    progress: bool = True,
    workers: int | None = None,
) -> BPETokenizer:
    """Learn `vocab_size - 256 - len(special_tokens)` merges from `texts` and return the tokenizer."""
    special_tokens = list(dict.fromkeys(special_tokens))
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ScratchLLMError(f"vocab_size {vocab_size} is too small: need at least {256 + len(special_tokens)}")
    counts = count_pretokens(texts, pattern, workers)
    words: list[list[int]] = [list(tok.encode("utf-8")) for tok in counts]
    freqs: list[int] = list(counts.values())
    del counts

    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for idx, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where.setdefault(pair, set()).add(idx)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    ids: dict[bytes, int] = {b: i for i, b in vocab.items()}
    from tqdm import tqdm

    bar = tqdm(total=n_merges, desc="BPE merges", unit="merge", disable=not progress)
    while len(vocab) - 256 < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale entry: the count changed after it was pushed
        token = vocab[pair[0]] + vocab[pair[1]]
        # Two different pairs can spell the same bytes ("ab"+"c", "a"+"bc"): reuse the id so the
        # vocabulary stays a one-to-one rank table.
        new_id = ids.get(token)
        if new_id is None:
            new_id = ids[token] = len(vocab)
            vocab[new_id] = token
            bar.update(1)
        changed: set[tuple[int, int]] = set()
        # `where` is lazy: a word stays listed under pairs it no longer has; such words are skipped here.
        for idx in where.pop(pair, ()):
            word = words[idx]
            merged, i, n = [], 0, len(word)
            while i < n:
                if i + 1 < n and word[i] == pair[0] and word[i + 1] == pair[1]:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            if len(merged) == n:
                continue
            freq = freqs[idx]
            for p in zip(word, word[1:]):
                pair_counts[p] -= freq
                changed.add(p)
            for p in zip(merged, merged[1:]):
                pair_counts[p] += freq
                changed.add(p)
                if new_id in p:
                    where.setdefault(p, set()).add(idx)
            words[idx] = merged
        pair_counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_counts.pop(p, None)
    bar.close()
    if len(vocab) - 256 < n_merges:
        import sys

        print(f"note: the corpus supports only {len(vocab) + len(special_tokens):,} ids (no pair left to merge), "
              f"fewer than the {vocab_size:,} asked for", file=sys.stderr)  # fmt: skip
    specials = {tok: len(vocab) + i for i, tok in enumerate(special_tokens)}
    return BPETokenizer(ids, specials, pattern, name)
