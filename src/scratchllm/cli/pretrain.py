"""`scratchllm pretrain`: train a GPT or Llama model from scratch; with no arguments, the default run.

The default run trains a BPE tokenizer on the Python standard library's source (cached), tokenizes it,
and trains the small `gpt-demo` model for a few minutes on a CPU, printing validation loss and code
samples as it goes. Everything lands in a self-contained run folder (default runs/pretrain): config,
tokenizer, model.safetensors, checkpoints with optimizer and RNG state, metrics.jsonl and loss.png.
Settings come from --config FILE.yaml and every field can be overridden by its flag; model fields by
--model-FIELD (e.g. --model-n-layers 4). Multi-process: torchrun --nproc_per_node N -m scratchllm pretrain.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    import dataclasses
    import typing

    from scratchllm.cli.flags import add_config_flags
    from scratchllm.models.config import ModelConfig
    from scratchllm.training.config import PretrainConfig

    p = sub.add_parser("pretrain", help="train a model from scratch (default: small GPT on Python stdlib source)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", default=None, help="YAML file with PretrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out-dir (or --data-out holding other files) with the new run")
    add_config_flags(p, PretrainConfig, skip=("model_overrides",))
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        if not f.init or f.name in ("name", "vocab_size", "rope_scaling"):
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        conv = {bool: _parse_bool}.get(base, base)
        p.add_argument("--model-" + f.name.replace("_", "-"), dest="model__" + f.name, type=conv, default=None,
                       help=argparse.SUPPRESS)  # fmt: skip
    p.set_defaults(handler=run)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def run(args: argparse.Namespace) -> int:
    from scratchllm.cli.flags import config_file_for, config_overrides, is_main_process
    from scratchllm.training.config import build_config
    from scratchllm.training.trainer import pretrain

    values = vars(args)
    overrides = config_overrides(args)
    model_overrides = {k.split("__", 1)[1]: v for k, v in values.items() if k.startswith("model__") and v is not None}
    from scratchllm.training.config import PretrainConfig

    cfg = build_config(config_file_for(args, PretrainConfig), model_overrides=model_overrides, **overrides)
    result = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():
        return 0  # under torchrun, rank 0 alone reports
    last = result.evals[-1] if result.evals else None
    print(f"\nrun folder: {result.run_dir}")
    if last:
        val = (f"validation loss {last['val_loss']:.3f} (perplexity {last['val_perplexity']:.1f})"
               if "val_loss" in last else "no validation split")  # fmt: skip
        print(f"final: step {last['step']}, {last['tokens_seen']:,} tokens seen, train loss {last['train_loss']:.3f}, "
              f"{val}")  # fmt: skip
    import shlex

    prompt = shlex.quote(cfg.sample_prompt)
    print(f"try:   scratchllm generate --checkpoint {result.run_dir} --prompt {prompt} --temperature 0.8 --top-k 50")
    return 0
