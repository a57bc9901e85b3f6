"""`scratchllm tokenizer train|encode|decode|info`: the BPE tokenizer on its own."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train, inspect and use BPE tokenizers", description=__doc__)
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = tsub.add_parser("train", help="train a byte-level BPE vocabulary on a corpus")
    t.add_argument("--data", default=None, help="corpus file, folder or glob (default: Python stdlib source)")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--pattern", default="gpt4", choices=["gpt2", "gpt4"])
    t.add_argument(
        "--special",
        action="append",
        default=None,
        help="special token to reserve (repeatable; default <|endoftext|>)",
    )
    t.add_argument("--out", required=True, help="output file (scratchllm-tokenizer.json format)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.set_defaults(handler=run_train)

    for name, helptext in (("encode", "print the token ids of a text"), ("decode", "print the text of ids")):
        e = tsub.add_parser(name, help=helptext)
        e.add_argument("tokenizer", help="'gpt2', a tokenizer file or a folder holding one")
        e.add_argument("input", nargs="?", help="text (encode) or ids (decode); default: standard input")
        e.set_defaults(handler=run_encode if name == "encode" else run_decode)

    i = tsub.add_parser("info", help="vocabulary size, special tokens, pattern")
    i.add_argument("tokenizer")
    i.set_defaults(handler=run_info)


def run_train(args: argparse.Namespace) -> int:
    import time

    from scratchllm.data.corpus import corpus_files, corpus_name, read_text
    from scratchllm.files import claim_output_file
    from scratchllm.tokenizers.bpe import END_OF_TEXT, PATTERNS
    from scratchllm.tokenizers.train import train_bpe

    claim_output_file(args.out, args.overwrite)  # before minutes of training, not after
    files = corpus_files(args.data)
    start = time.perf_counter()
    tok = train_bpe(
        (read_text(f) for f in files),
        args.vocab_size,
        PATTERNS[args.pattern],
        special_tokens=args.special or [END_OF_TEXT],
        name=f"{corpus_name(args.data)}-bpe{args.vocab_size}",
    )
    path = tok.save(args.out)
    print(f"trained {tok} on {len(files)} files in {time.perf_counter() - start:.1f}s -> {path}")
    return 0


def _input(args) -> str:
    return args.input if args.input is not None else sys.stdin.read()


def run_encode(args: argparse.Namespace) -> int:
    from scratchllm.tokenizers.formats import load_tokenizer

    print(json.dumps(load_tokenizer(args.tokenizer).encode(_input(args), allowed_special="all")))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from scratchllm.errors import ScratchLLMError
    from scratchllm.tokenizers.formats import load_tokenizer

    text = _input(args).strip()
    try:
        ids = json.loads(text) if text.startswith("[") else [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ScratchLLMError("decode expects ids as a JSON list or separated by spaces/commas") from None
    print(load_tokenizer(args.tokenizer).decode(ids))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from scratchllm.tokenizers.formats import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    longest = max(tok.ranks, key=len)
    print(f"name          {tok.name}")
    print(f"vocab_size    {tok.vocab_size:,}")
    print(f"special       {tok.special_tokens}")
    print(f"pattern       {tok.pattern}")
    print(f"longest token {longest!r} ({len(longest)} bytes)")
    return 0
