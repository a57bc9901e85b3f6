"""`scratchllm info MODEL`: parameters, memory and FLOPs of a preset, a config file or a model folder.

A folder (a run folder, a HuggingFace or Meta model folder) is described from its config alone: no
weights are read, so `info` answers at once for an 8B model too.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("info", help="parameter count, memory footprint and FLOPs per token of a model",
                       description=__doc__)  # fmt: skip
    p.add_argument("model", nargs="?", default=None,
                   help="preset name, config file (YAML/JSON) or model folder; omit to list presets")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default: context length)")
    p.set_defaults(handler=run)


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def run(args: argparse.Namespace) -> int:
    from scratchllm.models.config import get_config, list_presets
    from scratchllm.models.stats import model_stats

    if args.model is None:
        for name in list_presets():
            c = get_config(name)
            print(f"{name:16s} {c.arch:9s} {_human(model_stats(c).params):>10s} params  context {c.context_length}")
        return 0
    from pathlib import Path

    if Path(args.model).is_dir():
        from scratchllm.checkpoints.load import read_folder_config

        config = read_folder_config(Path(args.model))
    else:
        config = get_config(args.model)
    s = model_stats(config, args.seq_len)
    print(f"model            {config.name} ({config.arch})")
    print(f"layers/heads/d   {config.n_layers} / {config.n_heads} (kv {config.n_kv_heads}) / {config.emb_dim}")
    print(f"context, vocab   {config.context_length:,}, {config.vocab_size:,} ({config.family.tokenizer_kind})")
    windows = [config.window(i) for i in range(config.n_layers)]
    if any(windows):
        print(f"attention        {sum(w is not None for w in windows)} of {config.n_layers} layers local "
              f"(window {config.sliding_window}; their KV cache holds only the window)")
    print(f"parameters       {s.params:,}")
    if config.mlp == "moe":
        print(f"  experts        {config.n_experts} per layer, {config.n_experts_active} active per token: "
              f"{_human(s.matmul_flops_per_token / 2)} parameters in use per token (embedding aside)")
    marks = ("", "  <- this model") if config.tie_embeddings else ("  <- this model", "")
    print(f"  untied head    {s.params_untied:,}{marks[0]}")
    print(f"  tied head      {s.params_tied:,}{marks[1]}  (head shares the token embedding, as in GPT-2's weights)")
    print(f"  non-embedding  {s.params - s.embedding_params:,}")
    print(f"memory           fp32 {s.memory_bytes(4) / 2**20:,.2f} MiB, bf16 {s.memory_bytes(2) / 2**20:,.2f} MiB")
    print(f"FLOPs per token  forward {_human(s.forward_flops_per_token, 'FLOP')}, "
          f"training {_human(s.train_flops_per_token, 'FLOP')} (at sequence length {s.seq_len:,})")  # fmt: skip
    return 0
