"""`scratchllm chat`: an interactive multi-turn conversation. /reset clears it, /quit (or Ctrl-D) leaves.

Ctrl-C while the model is answering stops that answer; Ctrl-C at the prompt leaves.
"""

from __future__ import annotations

import argparse
import sys

from scratchllm.cli.generate import add_model_arguments, add_sampling_arguments, generation_config, load_engine
from scratchllm.prompts import STYLES


def register(sub) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat with a model", description=__doc__)
    add_model_arguments(p)
    add_sampling_arguments(p, temperature=0.7)
    p.add_argument(
        "--template",
        default=None,
        choices=sorted(STYLES),
        help="prompt style (default: the one the model was fine-tuned with, llama3 for Llama 3 tokenizers, else plain)",
    )
    p.add_argument("--system", default=None, help="system message")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from scratchllm.generation.chat import Conversation, pick_template
    from scratchllm.generation.generate import stream_text

    engine, saved_style = load_engine(args)
    model, tokenizer = engine.model, engine.tokenizer
    template = pick_template(args.template, tokenizer, saved_style)
    base_cfg = generation_config(args, tokenizer)
    cfg = dataclasses.replace(base_cfg, stop_strings=tuple(base_cfg.stop_strings) + template.stop_strings)
    conv = Conversation(template, args.system)
    interactive = sys.stdin.isatty()
    dtype = str(engine.model.dtype).replace("torch.", "")
    print(f"chatting with {args.checkpoint} ({template.name} template, {dtype}); /reset clears, /quit leaves",
          file=sys.stderr)  # fmt: skip
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        message = line.strip()
        if not message:
            continue
        if message == "/quit":
            return 0
        if message == "/reset":
            conv.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        conv.turns.append({"role": "user", "content": message})
        ids = conv.prompt_ids(tokenizer, model.config.context_length, cfg.max_new_tokens)
        reply = ""
        try:
            with torch.inference_mode():
                for piece in stream_text(model, tokenizer, ids, cfg, engine=engine):
                    reply += piece
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n[answer stopped]", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()
        conv.turns.append({"role": "assistant", "content": reply.strip()})
