"""`scratchllm generate`: continue a prompt with a trained or downloaded model, streaming the text."""

from __future__ import annotations

import argparse
import sys


def add_model_arguments(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """--checkpoint/--tokenizer/--dtype/--device, shared by generate, chat and bench."""
    p.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        help="run folder, HuggingFace folder, or a model preset/config (random weights)",
    )
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer (file, folder or 'gpt2')")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto = the dtype the weights are stored in (16-bit ones in bf16 where the hardware has it natively)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--quantize",
        default=None,
        choices=["int8", "int4"],
        help="weight-only quantisation: int8 (one scale per row) or int4 (groups of 32, as llama.cpp's q4_0; "
        "CPU, bf16 activations); docs/benchmarks.md has the measured speeds",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the one-token decode step with torch.compile (up to 30 s once; 1.3-1.9x faster on CPU)",
    )


def add_sampling_arguments(p: argparse.ArgumentParser, temperature: float = 0.0) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def load_engine(args, max_batch: int = 1, max_seq_len: int | None = None, need_tokenizer: bool = True):
    """(engine, the style the checkpoint was fine-tuned with or None) for the model flags."""
    from scratchllm.checkpoints.load import check_tokenizer_fits, load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.generation.engine import Engine
    from scratchllm.tokenizers.formats import load_tokenizer

    loaded = load_checkpoint(args.checkpoint, args.dtype, args.device)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else loaded.tokenizer
    if tokenizer is None and need_tokenizer:
        raise ScratchLLMError(f"{args.checkpoint}: no tokenizer found with this checkpoint; pass --tokenizer")
    if tokenizer is not None:
        where = f"--tokenizer {args.tokenizer}" if args.tokenizer else args.checkpoint
        check_tokenizer_fits(loaded.model, tokenizer, where)
    announce_compile(args.compile)
    engine = Engine(loaded.model, tokenizer, max_batch=max_batch, max_seq_len=max_seq_len, quantize=args.quantize,
                    compile=args.compile)  # fmt: skip
    return engine, loaded.prompt_style


def announce_compile(compile: bool) -> None:
    if compile:
        print("--compile: the decode step compiles on first use (once per process, up to 30 s)", file=sys.stderr)


def generation_config(args, tokenizer):
    from scratchllm.generation.engine import GenerationConfig
    from scratchllm.generation.stream import end_of_text_ids

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
        stop_ids=end_of_text_ids(tokenizer), stop_strings=tuple(args.stop),
    )  # fmt: skip


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (streamed)", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the text to continue (an instruction, for a fine-tuned run)")
    p.add_argument("--raw", action="store_true",
                   help="continue --prompt as is, even for a run fine-tuned with a prompt style")  # fmt: skip
    add_sampling_arguments(p)
    p.add_argument("--stats", action="store_true", help="print prefill and decode speed afterwards")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    import torch

    from scratchllm.errors import ScratchLLMError
    from scratchllm.generation.generate import stream_text
    from scratchllm.prompts import get_style

    engine, style_name = load_engine(args)
    model, tokenizer = engine.model, engine.tokenizer
    cfg = generation_config(args, tokenizer)
    if not args.prompt:
        raise ScratchLLMError("--prompt is empty: give some text to continue")
    text = args.prompt
    if style_name and not args.raw:  # a fine-tuned run: the prompt is an instruction in its style
        style = get_style(style_name)
        text = style.format_instruction(args.prompt)
        cfg = dataclasses.replace(cfg, stop_strings=cfg.stop_strings + style.stop_strings)
    ids = tokenizer.encode(text, allowed_special="all")
    timings: dict = {}
    if text == args.prompt:
        sys.stdout.write(args.prompt)  # a continuation starts with its prompt; an answer stands alone
    start = time.perf_counter()
    with torch.inference_mode():
        for piece in stream_text(model, tokenizer, ids, cfg, timings, engine=engine):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if timings.get("context_full"):
        print(f"note: stopped after {timings['new_tokens']} new tokens of --max-new-tokens {args.max_new_tokens}: "
              f"the model's context of {model.config.context_length} tokens is full", file=sys.stderr)  # fmt: skip
    if args.stats:
        total = time.perf_counter() - start
        prefill = timings.get("prefill_seconds", 0.0)
        decode = timings.get("decode_seconds", 0.0)
        n = timings["new_tokens"]
        dtype = str(model.dtype).replace("torch.", "")
        print(f"[{dtype}] prompt {len(ids)} tokens, prefill {len(ids) / max(prefill, 1e-9):.1f} tokens/s; "
              f"{n} new tokens, decode {max(n - 1, 0) / max(decode, 1e-9):.1f} tokens/s; total {total:.2f}s",
              file=sys.stderr)  # fmt: skip
    return 0
