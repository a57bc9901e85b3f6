"""`scratchllm evaluate perplexity`: a model's perplexity and bits per byte on a text file.

Long texts are scored with a sliding window (--context tokens, a new window every --stride tokens; every
token scored once, with at least context - stride tokens of history). `--json` prints one JSON line.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model: perplexity", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    kinds = p.add_subparsers(dest="action", metavar="KIND", required=True)
    ppl = kinds.add_parser("perplexity", help="perplexity and bits per byte on a text file", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ppl.add_argument("--checkpoint", required=True, help="run folder, HuggingFace folder, hub name or preset")
    ppl.add_argument("--data", required=True, help="a UTF-8 text file, or the-verdict (shipped)")
    ppl.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer")
    ppl.add_argument("--context", type=int, default=None, help="window length (default: the model's context)")
    ppl.add_argument("--stride", type=int, default=None, help="tokens between windows (default: --context)")
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16"])
    ppl.add_argument("--device", default=None)
    ppl.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ppl.set_defaults(handler=run_perplexity)


def run_perplexity(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from scratchllm.checkpoints.load import check_tokenizer_fits, load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.evaluation.perplexity import perplexity
    from scratchllm.tokenizers.formats import load_tokenizer

    path = Path(args.data)
    if not path.exists() and args.data == "the-verdict":
        from scratchllm.assets import ASSETS

        path = ASSETS / "the-verdict.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScratchLLMError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ScratchLLMError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    loaded = load_checkpoint(args.checkpoint, args.dtype, args.device)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else loaded.tokenizer
    if tokenizer is None:
        raise ScratchLLMError(f"{args.checkpoint}: no tokenizer found with this checkpoint; pass --tokenizer")
    check_tokenizer_fits(loaded.model, tokenizer, args.tokenizer or args.checkpoint)
    ids = tokenizer.encode(text)
    result = perplexity(loaded.model, ids, len(text.encode("utf-8")), args.context, args.stride, args.batch_size,
                        progress=not args.json)  # fmt: skip
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(path), **result.to_dict()}))
    else:
        print(f"{path}: perplexity {result.perplexity:.3f}, loss {result.loss:.4f} nats/token, "
              f"{result.bits_per_byte:.4f} bits/byte ({result.tokens:,} tokens scored, {result.n_bytes:,} bytes, "
              f"{result.windows} windows)")  # fmt: skip
    return 0
