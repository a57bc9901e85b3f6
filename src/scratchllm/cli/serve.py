"""`scratchllm serve`: an OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models,
/health) with continuous batching, and a chat page at /.

It binds 127.0.0.1 unless --host says otherwise; with --api-key (or SCRATCHLLM_API_KEY) every /v1 request
must send `Authorization: Bearer KEY`. Ctrl-C or SIGTERM lets in-flight requests finish (up to
--graceful-seconds), then ends the rest with an error event.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scratchllm.cli.generate import add_model_arguments
from scratchllm.prompts import STYLES


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and web chat page", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("SCRATCHLLM_API_KEY"), help="require this bearer key")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the checkpoint's name)")
    p.add_argument("--template", default=None, choices=sorted(STYLES),
                   help="chat prompt style (default: the one the model was fine-tuned with, llama3 for Llama 3 "
                        "tokenizers; otherwise chat requests get a 400 unless a template is given)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (continuous batching)")
    p.add_argument("--max-seq-len", type=int, default=None, help="KV cache slots per sequence (default: the "
                   "model's context, at most 8192)")  # fmt: skip
    p.add_argument("--prefill-budget", type=int, default=512, help="prompt tokens prefilled per step while other "
                   "requests decode (lower: smoother streams; higher: faster first tokens)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond the batch; more get 429")
    p.add_argument("--max-tokens", type=int, default=4096, help="the largest max_tokens a request may ask for")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--graceful-seconds", type=float, default=30, help="on shutdown, time for requests to finish")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from scratchllm.cli.generate import load_engine
    from scratchllm.errors import ScratchLLMError
    from scratchllm.prompts import default_style, get_style
    from scratchllm.serving.app import Settings, create_app, serve

    for flag in ("max_batch", "max_queue", "max_tokens", "max_request_bytes", "prefill_budget"):
        if getattr(args, flag) < 1:
            raise ScratchLLMError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 <= args.port <= 65535:
        raise ScratchLLMError(f"--port must be between 0 and 65535, got {args.port}")
    engine, saved_style = load_engine(args, max_batch=args.max_batch, max_seq_len=args.max_seq_len)
    engine.max_queue, engine.prefill_budget = args.max_queue, args.prefill_budget
    tokenizer = engine.tokenizer
    template = get_style(args.template or saved_style) if args.template or saved_style else default_style(tokenizer)
    name = args.model_name or Path(str(args.checkpoint).rstrip("/")).name
    settings = Settings(name, template, args.api_key, args.max_request_bytes, args.max_tokens, bind_host=args.host)
    app = create_app(engine, settings)
    print(f"serving {name} on http://{args.host}:{args.port} (chat page at /, API at /v1; "
          f"template: {template.name if template else 'none'}; batch up to {args.max_batch}; "
          f"{str(engine.model.dtype).replace('torch.', '')} on {engine.device})",
          file=sys.stderr)  # fmt: skip
    serve(app, args.host, args.port, args.graceful_seconds)
    return 0
