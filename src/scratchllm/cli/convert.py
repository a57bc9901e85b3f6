"""`scratchllm convert --to hf|scratchllm|gguf SOURCE OUT`: export a run folder for the HF ecosystem or
llama.cpp / Ollama, or import one.

`--to hf|scratchllm`: OUT is a folder, written whole (into a temporary folder beside it, then swapped in), so
it never mixes old and new files. `--to gguf`: OUT is one GGUF file, with an Ollama Modelfile beside it
(OUT's name with the suffix .Modelfile), both written atomically after everything has been checked. Nothing
existing is replaced without --overwrite, and an output is never SOURCE, inside it or around it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    from scratchllm.checkpoints.gguf import TYPES

    p = sub.add_parser("convert", help="convert between scratchllm, HuggingFace and GGUF (llama.cpp, Ollama)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--to", required=True, choices=["hf", "scratchllm", "gguf"], help="target format")
    p.add_argument("source", help="run folder, HF folder, Meta folder or hub name")
    p.add_argument("out", help="output folder (hf, scratchllm) or .gguf file")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="dtype of the written weights (hf, "
                   "scratchllm)")  # fmt: skip
    p.add_argument("--type", choices=TYPES, dest="gguf_type",
                   help="GGUF tensor type: f32, f16 (default, as llama.cpp's converter), bf16, or the 8- and "
                   "4-bit block quantisations q8_0, q4_0")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.checkpoints.convert import to_hf, to_scratchllm
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.files import claim_output_folder, refuse_overlap, replace_folder

    if args.to == "gguf":
        if args.dtype:
            raise ScratchLLMError("--dtype is for --to hf|scratchllm; a GGUF file's tensors are chosen with --type")
        return _to_gguf(args)
    if args.gguf_type:
        raise ScratchLLMError("--type is for --to gguf; --to hf|scratchllm take --dtype fp32|bf16")
    refuse_overlap(args.out, "OUT", {"SOURCE": args.source})
    claim_output_folder(args.out, args.overwrite, "converted model")
    loaded = load_checkpoint(args.source, args.dtype or "fp32", "cpu")
    if args.to == "hf":  # a fine-tuned run's prompt style becomes the tokenizer's chat_template
        from scratchllm.prompts import get_style

        style = get_style(loaded.prompt_style) if loaded.prompt_style else None
        replace_folder(args.out, lambda tmp: to_hf(loaded.model, loaded.tokenizer, tmp, prompt_style=style))
    else:
        replace_folder(args.out, lambda tmp: to_scratchllm(loaded.model, loaded.tokenizer, tmp, loaded.prompt_style))
    print(f"wrote {args.to} folder {args.out}")
    return 0


def _to_gguf(args: argparse.Namespace) -> int:
    from scratchllm.checkpoints.gguf import modelfile_text, to_gguf
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.files import atomic_write, claim_output_file, refuse_overlap
    from scratchllm.generation.stream import end_of_text_ids
    from scratchllm.prompts import default_style, get_style

    out = Path(args.out)
    modelfile = out.with_suffix(".Modelfile")
    for path, flag in ((out, "OUT"), (modelfile, "its Modelfile")):
        refuse_overlap(path, flag, {"SOURCE": args.source})
        claim_output_file(path, args.overwrite)
    loaded = load_checkpoint(args.source, "fp32", "cpu")  # quantised from full precision
    tokenizer = loaded.tokenizer
    style = get_style(loaded.prompt_style) if loaded.prompt_style else default_style(tokenizer)
    stop_ids = end_of_text_ids(tokenizer) if tokenizer is not None else ()
    qtype = args.gguf_type or "f16"
    to_gguf(loaded.model, tokenizer, out, qtype, style, stop_ids, name=Path(args.source).name,
            source=str(args.source))  # fmt: skip
    stops = tuple(tokenizer.decode([i]) for i in stop_ids)
    text = modelfile_text(out.name, style, stops)
    atomic_write(modelfile, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({qtype}, {size:.1f} MiB) and {modelfile}; "
          f"for Ollama: ollama create NAME -f {modelfile}")  # fmt: skip
    return 0
