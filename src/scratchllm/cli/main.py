"""`scratchllm` command line: one verb per stage of the product.

Each verb lives in its own module under `scratchllm.cli` with `register(subparsers)` (argument
definitions, cheap) and `run(args)` (the work; heavy imports such as torch happen inside it), so that
`scratchllm --help` answers instantly.

Errors are printed here and nowhere else: a `ScratchLLMError` (bad input: it names the file or field, what
was found and what was expected) and an `OSError` from the user's files (permissions, a full disk) as one
line with exit status 2; anything else is a bug in scratchllm, reported as one line with exit status 1
and a hint to rerun with `--debug`, which shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scratchllm import __version__
from scratchllm.errors import ScratchLLMError

VERBS = ["prepare", "tokenizer", "pretrain", "finetune", "classify", "respond", "evaluate", "info", "generate", "chat",
         "bench", "serve", "download", "convert"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Large language models from scratch: prepare data, train, generate, fine-tune, serve.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
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
    except OSError as e:
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())[:300]
        print(f"error: internal error in scratchllm ({type(e).__name__}: {message}); "
              f"rerun with `scratchllm --debug {args.verb} ...` for the traceback", file=sys.stderr)  # fmt: skip
        return 1
