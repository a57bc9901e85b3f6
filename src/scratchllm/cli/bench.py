"""`scratchllm bench`: inference speed of a checkpoint or a preset (random weights).

For every prompt length x batch size: time to first token (prefill), time per output token, decode and
prefill tokens/s, peak memory, and the share of the machine's memory bandwidth the decode uses (each
decode step must read every weight once, so weights x steps/s over the measured bandwidth). The last line
is a JSON summary for scripts.
"""

from __future__ import annotations

import argparse
import json

from scratchllm.cli.generate import add_model_arguments, announce_compile


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed, memory and bandwidth use", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--prompt-lengths", default="32,256", help="comma-separated prompt lengths in tokens")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(handler=run)


def _ints(text: str, flag: str) -> list[int]:
    from scratchllm.errors import ScratchLLMError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ScratchLLMError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ScratchLLMError(f"{flag} expects positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    import torch

    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.generation.engine import Engine
    from scratchllm.generation.generate import GenerationConfig, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths, batches = _ints(args.prompt_lengths, "--prompt-lengths"), _ints(args.batch_sizes, "--batch-sizes")
    loaded = load_checkpoint(args.checkpoint, args.dtype, args.device)
    model = loaded.model
    device = str(model.device)
    context = model.config.context_length
    if max(lengths) + args.new_tokens > context:
        raise ScratchLLMError(
            f"prompt length {max(lengths)} + {args.new_tokens} new tokens exceeds the context {context}"
        )
    announce_compile(args.compile)
    engine = Engine(model, max_batch=max(batches), max_seq_len=max(lengths) + args.new_tokens,
                    quantize=args.quantize, compile=args.compile)  # fmt: skip
    # Bytes one decode step must read: every weight as the engine prepared it (packed, int8, int4 or plain) except
    # the embedding tables, of which it reads a row; a head tied to the embedding is read whole.
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    skip = ("tok_emb.weight", "pos_emb.weight", "rope_cos", "rope_sin")
    weight_bytes = sum(t.numel() * t.element_size() for name, t in tensors.items() if name not in skip)
    weight_bytes += model.tok_emb.weight.numel() * model.tok_emb.weight.element_size() * model.is_tied
    from scratchllm.hardware import memory_bandwidth, peak_memory_mib

    bandwidth = memory_bandwidth() if device == "cpu" else None
    dtype = str(model.dtype).replace("torch.", "") + (f"+{args.quantize}" if args.quantize else "")
    dtype += "+compiled" if args.compile else ""
    print(
        f"{args.checkpoint} ({loaded.source} weights), {dtype}, {device}, {torch.get_num_threads()} threads, "
        f"weights {weight_bytes / 2**20:.0f} MiB"
        + (f", memory bandwidth {bandwidth / 1e9:.1f} GB/s" if bandwidth else "")
    )
    print(
        f"{'prompt':>6s} {'batch':>5s} {'TTFT ms':>8s} {'TPOT ms':>8s} {'decode tok/s':>12s} "
        f"{'prefill tok/s':>13s} {'peak MiB':>8s} {'bw util':>7s}"
    )
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        warmed: set[int] = set()
        for length in lengths:
            for batch in batches:
                prompts = torch.randint(0, model.config.vocab_size, (batch, length), generator=g).tolist()
                if batch not in warmed:  # warm-up per batch size (with --compile, each compiles once)
                    generate(model, prompts, GenerationConfig(max_new_tokens=2), engine=engine)
                    warmed.add(batch)
                r = generate(model, prompts, GenerationConfig(max_new_tokens=args.new_tokens), engine=engine)
                tpot = r.decode_seconds / max(r.decode_steps, 1)
                util = (weight_bytes / tpot) / bandwidth if bandwidth and r.decode_steps else None
                row = {
                    "prompt_len": length,
                    "batch": batch,
                    "ttft_ms": r.prefill_seconds * 1e3,
                    "tpot_ms": tpot * 1e3,
                    "decode_tokens_per_s": batch * r.decode_tokens_per_s,
                    "prefill_tokens_per_s": r.prefill_tokens_per_s,
                    "peak_memory_mib": peak_memory_mib(device),
                    "bandwidth_utilisation": util,
                }
                rows.append(row)
                print(
                    f"{length:6d} {batch:5d} {row['ttft_ms']:8.1f} {row['tpot_ms']:8.2f} "
                    f"{row['decode_tokens_per_s']:12.1f} {row['prefill_tokens_per_s']:13.1f} "
                    f"{row['peak_memory_mib']:8.0f} " + (f"{util:7.1%}" if util is not None else f"{'n/a':>7s}")
                )
    print(
        json.dumps(
            {
                "checkpoint": str(args.checkpoint),
                "dtype": dtype,
                "device": device,
                "weight_bytes": weight_bytes,
                "results": rows,
            }
        )
    )
    return 0
