"""`scratchllm` command line: one verb per stage of the product.

Each verb lives in its own module under `scratchllm.cli` with `register(subparsers)` (argument
definitions, cheap) and `run(args)` (the work; heavy imports such as torch happen inside it), so that
`scratchllm --help` answers instantly. A `ScratchLLMError` is printed as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scratchllm import __version__
from scratchllm.errors import ScratchLLMError

VERBS = ["prepare", "tokenizer", "pretrain", "info", "generate", "chat", "bench", "download", "convert"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Large language models from scratch: prepare data, train, generate, fine-tune, serve.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"scratchllm.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.verb is None else 2
    try:
        return args.handler(args) or 0
    except ScratchLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
