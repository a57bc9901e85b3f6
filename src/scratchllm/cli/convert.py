"""`scratchllm convert --to hf|scratchllm SOURCE OUT`: export a run folder for the HF ecosystem, or import."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert between scratchllm and HuggingFace model folders", description=__doc__)
    p.add_argument("--to", required=True, choices=["hf", "scratchllm"], help="target format")
    p.add_argument("source", help="run folder, HF folder, Meta folder or hub name")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="dtype of the written weights")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoints.convert import to_hf, to_scratchllm
    from scratchllm.checkpoints.load import load_checkpoint

    loaded = load_checkpoint(args.source, args.dtype, "cpu")
    out = (to_hf if args.to == "hf" else to_scratchllm)(loaded.model, loaded.tokenizer, args.out)
    print(f"wrote {args.to} folder {out}")
    return 0
