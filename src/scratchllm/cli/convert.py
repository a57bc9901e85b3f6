"""`scratchllm convert --to hf|scratchllm SOURCE OUT`: export a run folder for the HF ecosystem, or import.

OUT is written whole: into a temporary folder beside it, then swapped in, so it never mixes old and new
files. A non-empty OUT is replaced only with --overwrite, and never when it is SOURCE or inside it.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert between scratchllm and HuggingFace model folders", description=__doc__)
    p.add_argument("--to", required=True, choices=["hf", "scratchllm"], help="target format")
    p.add_argument("source", help="run folder, HF folder, Meta folder or hub name")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="dtype of the written weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    from scratchllm.checkpoints.convert import to_hf, to_scratchllm
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.files import claim_output_folder, refuse_overlap, replace_folder

    refuse_overlap(args.out, "OUT", {"SOURCE": args.source})
    claim_output_folder(args.out, args.overwrite, "converted model")
    loaded = load_checkpoint(args.source, args.dtype, "cpu")
    if args.to == "hf":  # a fine-tuned run's prompt style becomes the tokenizer's chat_template
        from scratchllm.prompts import get_style

        style = get_style(loaded.prompt_style) if loaded.prompt_style else None
        replace_folder(args.out, lambda tmp: to_hf(loaded.model, loaded.tokenizer, tmp, prompt_style=style))
    else:
        replace_folder(args.out, lambda tmp: to_scratchllm(loaded.model, loaded.tokenizer, tmp, loaded.prompt_style))
    print(f"wrote {args.to} folder {args.out}")
    return 0
