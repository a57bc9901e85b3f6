"""Classification fine-tuning step: our SequenceClassifier vs transformers' GPT2ForSequenceClassification.

One step = forward + backward + fused AdamW over the trainable parameters, batch 8 x 120 tokens (the book's
SMS spam batches), gpt2-small random weights shared by both, dropout 0, 2 threads. Two trainable sets: the
book's `last-block` (last block + final norm + head) and `all`. Each (implementation, trainable, dtype)
runs in its own subprocess so its peak memory (max RSS) is its own; rounds alternate the order and the best
is kept. Prints tokens/s, the ratio ours/transformers, peak memory, and how much cheaper last-block is.

    .venv/bin/python benchmarks/bench_finetune.py [--model gpt2-small] [--dtypes fp32,bf16] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from steps import time_steps, training_step


def build(impl: str, model_name: str, trainable: str):
    """(module, loss_fn) with only `trainable` requiring gradients, from the same seeded weights."""
    from scratchllm.models import build_model
    from scratchllm.models.classifier import SequenceClassifier, set_trainable

    torch.manual_seed(0)
    backbone = build_model(model_name, drop_rate=0.0)
    pad = backbone.config.vocab_size - 1  # <|endoftext|> for GPT-2
    ours = SequenceClassifier(backbone, 2, "last-non-pad", pad_id=pad)
    set_trainable(ours, trainable)
    if impl == "ours":
        return ours, lambda x, y: torch.nn.functional.cross_entropy(ours(x).float(), y)
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf

    cfg = transformers.GPT2Config(**{k: v for k, v in config_to_hf(backbone.config).items() if k != "architectures"},
                                  num_labels=2, pad_token_id=pad)  # fmt: skip
    hf = transformers.GPT2ForSequenceClassification(cfg)
    hf.load_state_dict(state_dict_to_hf(backbone.state_dict(), backbone.config), strict=False)  # head: its own init
    hf.requires_grad_(trainable == "all")
    if trainable != "all":
        for part in (hf.transformer.h[-1], hf.transformer.ln_f, hf.score):
            part.requires_grad_(True)
    return hf, lambda x, y: torch.nn.functional.cross_entropy(hf(x).logits.float(), y)


def worker(impl: str, model_name: str, trainable: str, dtype: str, steps: int, batch: int, seq: int) -> dict:
    torch.set_num_threads(2)
    from scratchllm.allocator import keep_freed_memory

    keep_freed_memory()  # as `finetune` runs on CPU
    model, loss_fn = build(impl, model_name, trainable)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.1, fused=True)
    from scratchllm.models import get_config

    vocab = get_config(model_name).vocab_size
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab - 1, (batch, seq), generator=g)
    x[::2, seq - 20 :] = vocab - 1  # half the rows right-padded with the pad id, as real batches are
    y = torch.randint(0, 2, (batch,), generator=g)

    seconds, peak_mb = time_steps(training_step(loss_fn, opt, (x, y), dtype), steps)
    return {"tokens_per_s": batch * seq / seconds, "peak_rss_mb": peak_mb, "trainable": sum(p.numel() for p in params)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small")
    p.add_argument("--dtypes", default=None, help="comma-separated (default: fp32, plus bf16 where it is native)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=120)
    p.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        impl, trainable, dtype = args.worker
        print(json.dumps(worker(impl, args.model, trainable, dtype, args.steps, args.batch, args.seq)))
        return
    from scratchllm.hardware import cpu_description, cpu_has_bf16

    torch.set_num_threads(2)
    print(f"CPU: {cpu_description()}", flush=True)
    dtypes = (args.dtypes or ("fp32,bf16" if cpu_has_bf16() else "fp32")).split(",")
    print(f"{args.model}, batch {args.batch} x {args.seq}, forward + backward + fused AdamW, best of {args.rounds}\n")
    print(f"{'trainable':10s} {'dtype':5s} {'impl':6s} {'tokens/s':>9s} {'peak MB':>8s} {'params':>12s}  ours/HF")
    for dtype in dtypes:
        ours_by_set = {}
        for trainable in ("last-block", "all"):
            best: dict[str, dict] = {}
            for r in range(args.rounds):
                for impl in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
                    cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch",
                           str(args.batch), "--seq", str(args.seq), "--worker", impl, trainable, dtype]  # fmt: skip
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        sys.exit(f"{impl} {trainable} {dtype} failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
                    res = json.loads(done.stdout.strip().splitlines()[-1])
                    if impl not in best or res["tokens_per_s"] > best[impl]["tokens_per_s"]:
                        best[impl] = res
            for impl in ("ours", "hf"):
                b = best[impl]
                ratio = f"{best['ours']['tokens_per_s'] / b['tokens_per_s']:.2f}x" if impl == "hf" else ""
                print(f"{trainable:10s} {dtype:5s} {impl:6s} {b['tokens_per_s']:9.1f} {b['peak_rss_mb']:8.0f} "
                      f"{b['trainable']:12,d}  {ratio}", flush=True)  # fmt: skip
            ours_by_set[trainable] = best["ours"]["tokens_per_s"]
        print(f"  {dtype}: last-block step {ours_by_set['last-block'] / ours_by_set['all']:.2f}x as fast as all layers "
              "(no backward through frozen blocks, no optimizer state for them)\n")


if __name__ == "__main__":
    main()
