"""LoRA vs full fine-tuning step on the same model and batch (book appendix E; the book: LoRA 28% faster on
GPT-2 medium). Goal: LoRA >= 1.3x, with peak memory well below full fine-tuning.

One step = forward + backward + fused AdamW over the trainable parameters, next-token loss on a batch of
instruction-like sequences (8 x 128 tokens by default, random ids), dropout 0, 2 threads, LoRA rank 16 /
alpha 16 on every Linear incl. the output head (the book's setting; `--targets` narrows it). Each variant
runs in its own subprocess so its peak memory (max RSS) is its own; rounds alternate the order and the best
is kept.

    .venv/bin/python benchmarks/bench_lora.py [--model gpt2-medium] [--dtypes fp32,bf16] [--targets all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from steps import time_steps, training_step


def worker(variant: str, model_name: str, dtype: str, steps: int, batch: int, seq: int, targets: str) -> dict:
    torch.set_num_threads(2)
    from scratchllm.allocator import keep_freed_memory
    from scratchllm.models import build_model
    from scratchllm.models.lora import LoRAConfig, apply_lora
    from scratchllm.training.loss import fused_linear_cross_entropy

    keep_freed_memory()  # as `finetune` runs on CPU
    torch.manual_seed(0)
    model = build_model(model_name, drop_rate=0.0).train()
    if variant == "lora":
        apply_lora(model, LoRAConfig(rank=16, alpha=16, targets=tuple(targets.split(","))))

    def loss_fn(x, y):  # what InstructTask.loss does
        return fused_linear_cross_entropy(model.hidden(x), model.head_weight, y)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.1, fused=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    y = torch.roll(x, -1, dims=1)
    y[::2, seq - 30 :] = -100  # padding, as collated batches have
    seconds, peak_mb = time_steps(training_step(loss_fn, opt, (x, y), dtype), steps)
    return {"tokens_per_s": batch * seq / seconds, "peak_rss_mb": peak_mb, "trainable": sum(p.numel() for p in params)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-medium")
    p.add_argument("--dtypes", default=None, help="comma-separated (default: fp32, plus bf16 where it is native)")
    p.add_argument("--targets", default="all")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        variant, dtype = args.worker
        print(json.dumps(worker(variant, args.model, dtype, args.steps, args.batch, args.seq, args.targets)))
        return
    from scratchllm.hardware import cpu_description, cpu_has_bf16

    print(f"CPU: {cpu_description()}", flush=True)
    dtypes = (args.dtypes or ("fp32,bf16" if cpu_has_bf16() else "fp32")).split(",")
    print(f"{args.model}, batch {args.batch} x {args.seq}, forward + backward + fused AdamW, best of {args.rounds}; "
          f"LoRA rank 16, alpha 16, targets {args.targets}\n")  # fmt: skip
    print(f"{'variant':8s} {'dtype':5s} {'tokens/s':>9s} {'peak MB':>8s} {'trainable':>12s}")
    for dtype in dtypes:
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for variant in ("full", "lora") if r % 2 == 0 else ("lora", "full"):
                cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--seq", str(args.seq), "--targets", args.targets, "--worker", variant, dtype]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{variant} {dtype} failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
                res = json.loads(done.stdout.strip().splitlines()[-1])
                if variant not in best or res["tokens_per_s"] > best[variant]["tokens_per_s"]:
                    best[variant] = res
        for variant in ("full", "lora"):
            b = best[variant]
            print(f"{variant:8s} {dtype:5s} {b['tokens_per_s']:9.1f} {b['peak_rss_mb']:8.0f} {b['trainable']:12,d}")
        speed = best["lora"]["tokens_per_s"] / best["full"]["tokens_per_s"]
        memory = best["lora"]["peak_rss_mb"] / best["full"]["peak_rss_mb"]
        print(f"  {dtype}: LoRA step {speed:.2f}x as fast as full fine-tuning (goal >= 1.3x), peak memory "
              f"{memory:.0%} of it\n", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
