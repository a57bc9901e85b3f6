"""`scratchllm prepare`: corpus -> tokenizer -> token file, printing what it made."""

from __future__ import annotations

import argparse


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every verb that starts from a raw corpus (prepare, pretrain)."""
    p.add_argument("--data", default=None, help="corpus: a file, a folder or a glob (default: Python stdlib source)")
    p.add_argument(
        "--tokenizer",
        default="train",
        help="'train' (BPE trained on the corpus, default), 'gpt2', or a tokenizer file/folder",
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size when training (default 8192)")
    p.add_argument("--pattern", default="gpt4", choices=["gpt2", "gpt4"], help="pre-tokenization regex")
    p.add_argument("--data-out", default=None, help="folder for the token file (default data/CORPUS-TOKENIZER)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens held out for validation")


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus into a token file (trains a tokenizer if asked)",
        description=__doc__,
    )
    add_data_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace a --data-out folder that holds other files")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time

    from scratchllm.data.pipeline import options_from, prepare_data

    start = time.perf_counter()
    prepared = prepare_data(options_from(args), overwrite=args.overwrite)
    m = prepared.meta
    print(f"prepared {prepared.folder} in {time.perf_counter() - start:.1f}s")
    print(f"  source      {m.source} ({m.n_documents} documents, {m.n_characters:,} characters)")
    print(f"  tokenizer   {m.tokenizer} (vocab {m.vocab_size:,})")
    print(f"  tokens      {m.n_tokens:,} ({m.n_characters / max(m.n_tokens, 1):.2f} characters per token)")
    print(f"  split       train {m.n_train:,} / validation {m.n_val:,}")
    return 0
