"""Mixture-of-experts benchmark: our grouped experts vs transformers' Qwen3-MoE on the same weights.

A Qwen3-MoE-shaped stack (64 experts, top-8, 4 layers, d=512, expert width 256, a small vocabulary so the
experts dominate) is saved once as a HuggingFace folder; every implementation loads that folder:
- `ours`: `scratchllm`'s Transformer (tokens sorted by expert, one grouped product for all experts),
- `hf`: transformers' default experts code (a Python loop over the experts that received tokens),
- `hf-grouped`: transformers with `experts_implementation="grouped_mm"` (its fastest kernel here).
Each (implementation, mode) runs in its own subprocess so its peak memory (max RSS) is its own; rounds
alternate the order and the best of them is kept (one process's time varies by 20% on a shared 2-core VM).
Modes: a forward pass (no grad) and a training step (forward + backward + AdamW), fp32, batch x seq tokens,
2 threads. Prints ms per call, ratios against each HF variant, peak RSS, and the expert products' share of
the matmul peak measured in the same run (the work is compute-bound: every implementation does the same
k / n_experts of a dense layer's FLOPs).

    .venv/bin/python benchmarks/bench_moe.py
    .venv/bin/python benchmarks/bench_moe.py --experts 128 --top-k 8 --steps 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from steps import time_steps, training_step

IMPLS = ("ours", "hf", "hf-grouped")
MODES = ("forward", "train")


def make_folder(folder: Path, args) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(
        vocab_size=2048, hidden_size=args.dim, intermediate_size=4 * args.dim, moe_intermediate_size=args.expert_dim,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
        num_experts=args.experts, num_experts_per_tok=args.top_k, norm_topk_prob=True, max_position_embeddings=1024,
        router_aux_loss_coef=0.0, pad_token_id=None,
    )  # fmt: skip
    model = transformers.Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)  # decisive routing, uneven loads: what a trained router does
    model.save_pretrained(folder)


def worker(impl: str, folder: str, mode: str, steps: int, batch: int, seq: int) -> dict:
    torch.set_num_threads(2)
    from scratchllm.training.loss import cross_entropy, lm_loss

    if impl == "ours":
        from scratchllm.checkpoints.load import load_checkpoint

        model = load_checkpoint(folder, "fp32").model
        loss_fn = lambda x, y: lm_loss(model, x, y)  # noqa: E731
        forward = lambda x: model(x)  # noqa: E731
    else:
        import transformers

        kw = {"experts_implementation": "grouped_mm"} if impl == "hf-grouped" else {}
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", **kw)
        loss_fn = lambda x, y: cross_entropy(model(x).logits, y)  # noqa: E731
        forward = lambda x: model(x).logits  # noqa: E731
    data = torch.randint(0, 2048, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    x, y = data[:, :-1], data[:, 1:]
    if mode == "forward":
        model.eval()

        def step() -> None:
            with torch.no_grad():
                forward(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = training_step(loss_fn, opt, (x, y), "fp32")
    start = time.perf_counter()
    seconds, peak_mb = time_steps(step, steps)
    return {"ms": seconds * 1000, "peak_rss_mb": peak_mb, "total_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--expert-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)  # impl folder mode
    args = p.parse_args()
    if args.worker:
        impl, folder, mode = args.worker
        print(json.dumps(worker(impl, folder, mode, args.steps, args.batch, args.seq)))
        return

    from scratchllm.hardware import cpu_description

    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args)
        results: dict = {}
        for round_ in range(args.rounds):
            for mode in MODES:
                for impl in IMPLS[::-1] if round_ % 2 else IMPLS:
                    cmd = [sys.executable, __file__, "--worker", impl, tmp, mode, "--steps", str(args.steps),
                           "--batch", str(args.batch), "--seq", str(args.seq)]  # fmt: skip
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                        sys.exit(f"{impl} {mode} failed: {last}")
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    if (impl, mode) not in results or r["ms"] < results[impl, mode]["ms"]:
                        results[impl, mode] = r
    from scratchllm.hardware import measure_matmul_peak

    torch.set_num_threads(2)
    peak = measure_matmul_peak(torch.float32)
    expert_flops = 2 * 3 * args.dim * args.expert_dim * args.top_k * args.batch * args.seq * args.layers
    print(f"{cpu_description()}, torch {torch.__version__}, 2 threads, fp32; {args.layers} layers, {args.experts} "
          f"experts top-{args.top_k}, d={args.dim}, expert width {args.expert_dim}, {args.batch}x{args.seq} tokens")
    print(f"{'mode':8s} {'impl':11s} {'ms':>9s} {'peak RSS MB':>12s} {'ours faster by':>15s}")
    for mode in MODES:
        ours = results["ours", mode]
        for impl in IMPLS:
            r = results[impl, mode]
            ratio = "" if impl == "ours" else f"{r['ms'] / ours['ms']:.2f}x"
            print(f"{mode:8s} {impl:11s} {r['ms']:9.1f} {r['peak_rss_mb']:12.0f} {ratio:>15s}")
    share = expert_flops / (results["ours", "forward"]["ms"] / 1000) / peak
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; the expert products alone are {expert_flops / 1e9:.1f} GFLOP per "
          f"forward, {share:.0%} of that peak over our whole forward's time")


if __name__ == "__main__":
    main()
