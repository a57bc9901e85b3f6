"""Tokenizer benchmark: our BPE trainer vs HuggingFace `tokenizers`, our encoder vs tiktoken.

Run: `.venv/bin/python benchmarks/bench_tokenizer.py` (needs the test extras). Both sides run in the same
process on the same corpus (the embedded default: Python stdlib source) and the script prints ratios.
"""

from __future__ import annotations

import argparse
import time

from scratchllm.data.corpus import default_corpus_files, read_text
from scratchllm.tokenizers.bpe import GPT4_PATTERN, PATTERNS
from scratchllm.tokenizers.formats import load_tokenizer
from scratchllm.tokenizers.train import count_pretokens, train_bpe


def bench_training(texts: list[str], vocab_size: int) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    mb = sum(len(t.encode()) for t in texts) / 1e6
    start = time.perf_counter()
    counts = count_pretokens(texts, GPT4_PATTERN)
    t_pre = time.perf_counter() - start
    start = time.perf_counter()
    ours = train_bpe(texts, vocab_size, GPT4_PATTERN, progress=False)
    t_ours = time.perf_counter() - start

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    start = time.perf_counter()
    hf.train_from_iterator(texts, trainer)
    t_hf = time.perf_counter() - start

    sample = "\n".join(texts[:50])
    ours_len, hf_len = len(ours.encode_ordinary(sample)), len(hf.encode(sample).ids)
    print(f"BPE training, {mb:.1f} MB, vocab {vocab_size}, {len(counts):,} distinct pre-tokens")
    print(f"  scratchllm train_bpe      {t_ours:6.2f} s   (pre-tokenize {t_pre:.2f} s, merges {t_ours - t_pre:.2f} s)")
    print(f"  HF tokenizers BpeTrainer  {t_hf:6.2f} s")
    print(f"  ratio ours/HF time        {t_ours / t_hf:6.2f}x   (target <= 5x)")
    print(f"  tokens on a sample: ours {ours_len:,}, HF {hf_len:,} (same vocab size; compression check)")


def bench_encode(texts: list[str], repeats: int) -> None:
    import tiktoken

    gpt2 = load_tokenizer("gpt2")  # shipped with the package
    ref = tiktoken.Encoding(
        "gpt2-ref",
        pat_str=PATTERNS["gpt2"],
        mergeable_ranks=dict(gpt2.ranks),
        special_tokens=dict(gpt2.special_tokens),
    )
    mb = sum(len(t.encode()) for t in texts) / 1e6

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    assert [gpt2.encode(t) for t in texts[:20]] == [ref.encode(t) for t in texts[:20]]
    t_ours = timed(lambda: [gpt2.encode(t) for t in texts])
    t_tik = timed(lambda: [ref.encode(t) for t in texts])
    t_ours_b = timed(lambda: gpt2.encode_batch(texts))
    t_tik_b = timed(lambda: ref.encode_ordinary_batch(texts))
    small = texts[: max(1, len(texts) // 50)]
    mb_small = sum(len(t.encode()) for t in small) / 1e6
    t_py = timed(lambda: [gpt2.encode_reference(t) for t in small])
    print(f"GPT-2 encoding throughput, {mb:.1f} MB, best of {repeats}")
    print(
        f"  scratchllm encode         {mb / t_ours:7.2f} MB/s   tiktoken encode        {mb / t_tik:7.2f} MB/s"
        f"   ratio {t_tik / t_ours:.2f}x (target >= 0.9x)"
    )
    print(
        f"  scratchllm encode_batch   {mb / t_ours_b:7.2f} MB/s   tiktoken encode_batch  {mb / t_tik_b:7.2f} MB/s"
        f"   ratio {t_tik_b / t_ours_b:.2f}x"
    )
    print(f"  pure-Python reference     {mb_small / t_py:7.2f} MB/s   ({t_py / t_ours * mb / mb_small:.0f}x slower)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from scratchllm.hardware import cpu_description

    print(f"CPU: {cpu_description()}", flush=True)
    texts = [read_text(f) for f in default_corpus_files()]
    bench_training(texts, args.vocab_size)
    bench_encode(texts, args.repeats)


if __name__ == "__main__":
    main()
