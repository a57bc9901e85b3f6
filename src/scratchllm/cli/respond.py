"""`scratchllm respond`: a fine-tuned model's responses to instruction records, in the book's JSON shape.

Reads JSON/JSONL records (instruction/input/output or chat `messages`), takes the book's test split (or
--split all), formats each with the style the run was fine-tuned with (or --style), generates greedily on
the engine with the style's stop conditions, and writes the records plus `model_response` (book ch. 7.7),
ready for `evaluate judge`. `finetune instruct` does this for its test split at the end.
"""

from __future__ import annotations

import argparse

from scratchllm.prompts import STYLES


def register(sub) -> None:
    p = sub.add_parser("respond", help="responses of a fine-tuned model to instruction records (JSON)",
                       description=__doc__)  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a fine-tuned run folder (or any model with --style)")
    p.add_argument("--data", required=True, help="JSON or JSONL instruction records, or book-instructions")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                   help="the book's 85/10/5 split in file order (default: test)")  # fmt: skip
    p.add_argument("--out", default="responses.json", help="output JSON file")
    p.add_argument("--style", default=None, choices=sorted(STYLES), help="default: the run's own")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="records generated together")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.data.instructions import book_split, read_examples, write_responses
    from scratchllm.data.registry import dataset_file, local_path
    from scratchllm.errors import ScratchLLMError
    from scratchllm.files import claim_output_file, refuse_overlap
    from scratchllm.generation.respond import respond
    from scratchllm.generation.stream import end_of_text_ids
    from scratchllm.prompts import get_style

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ScratchLLMError("--max-new-tokens and --batch-size must be >= 1")
    inputs = {"--data": local_path(args.data, "instructions"), "--checkpoint": args.checkpoint}
    refuse_overlap(args.out, "--out", inputs)
    out = claim_output_file(args.out, args.overwrite)
    loaded = load_checkpoint(args.checkpoint, args.dtype, args.device)
    name = args.style or loaded.prompt_style
    if name is None:
        raise ScratchLLMError(f"{args.checkpoint}: no prompt style saved with this model; pass --style")
    if loaded.tokenizer is None:
        raise ScratchLLMError(f"{args.checkpoint}: no tokenizer found with this checkpoint")
    style = get_style(name)
    examples = read_examples(dataset_file(args.data, "instructions"), style)
    if args.split != "all":
        train, val, test = book_split(examples)
        examples = {"train": train, "val": val, "test": test}[args.split]
        if not examples:  # a small file's 5% / 10% split can round to nothing: say so, write nothing
            raise ScratchLLMError(f"{args.data}: its {args.split} split is empty ({len(train) + len(val) + len(test)} "
                                  "records split 85/10/5); pass --split all or another split")  # fmt: skip
    answers = respond(loaded.model, loaded.tokenizer, [e.prompt for e in examples], end_of_text_ids(loaded.tokenizer),
                      style.stop_strings, args.max_new_tokens, args.batch_size, progress=True)  # fmt: skip
    write_responses(Path(out), examples, answers)
    print(f"{len(examples)} responses ({style.name} style) written to {out}")
    return 0
