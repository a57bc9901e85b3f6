"""`scratchllm download NAME`: fetch a hub model (gpt2, gpt2-medium, ..., llama3.2-1b, owner/name) once."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("download", help="download a model from the HuggingFace hub into the cache", description=__doc__)
    p.add_argument("name", help="short name (gpt2, gpt2-xl, llama3.2-1b, ...) or owner/name")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoints.download import download_model

    folder = download_model(args.name)
    print(f"{args.name}: {folder}\nuse it with --checkpoint {args.name}")
    return 0
