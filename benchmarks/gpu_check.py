"""The GPU check: every figure scratchllm claims on a GPU, measured against transformers in one run.

Run it through `benchmarks/gpu_check.sh` (which finds the Python and the sources). Each check prints one JSON
line (`{"check": ..., "status": "ok" | "skipped" | "failed", ...}`); a check that fails does not stop the
others, and a package the machine lacks skips its check with the reason. It needs PyTorch and transformers
only (no downloads: every model has random weights):

- pretrain: gpt2-small training step (bf16 autocast, fused AdamW, `torch.compile`, the loss `pretrain` uses)
  vs transformers' GPT2LMHeadModel on the same weights and batch: tokens/s, MFU against this GPU's bf16
  matmul peak measured in the same run, peak memory. Goals: MFU >= 45%, >= 1.3x transformers.
- decode: greedy decode tokens/s at batch 1/8/64 on the engine, eager and compiled (a CUDA graph replayed
  over fixed shapes), vs transformers' `generate`. Goal: compiled batch 1 >= 2x transformers.
- serve: aggregate streaming tokens/s at 1/8/32 clients against `scratchllm serve` (needs FastAPI, uvicorn).
- lora: a LoRA step (rank 16, every Linear) vs a full fine-tuning step on gpt2-medium.
- families: issue 21's goals where a CPU cannot reach them: fp32 decode at batch 1 (eager and compiled) of
  Qwen3-0.6B- and Gemma-3-270M-shaped models vs transformers (goal >= 1.5x), and a Qwen3-30B-A3B-shaped
  expert stack's forward and training step vs transformers' experts on the same weights (goal >= 2x).
- tests: the test suite's device-parametrised tests on this device (needs pytest).

`--device cpu` is the smoke test: tiny models and sizes, no compilation, under a minute (CI runs it).

    benchmarks/gpu_check.sh                 # a GPU machine: about 6-8 minutes on an H100/H200
    benchmarks/gpu_check.sh --device cpu    # smoke test
    benchmarks/gpu_check.sh --only decode,lora --out figures.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("pretrain", "decode", "serve", "lora", "families", "tests")
# Sizes per device kind: the GPU sizes fill an 80-141 GB card's time budget, the CPU ones only exercise the code.
SIZES = {
    "cuda": dict(model="gpt2-small", batch=32, seq=1024, steps=20, warmup=5, compile=True, decode_model="gpt2-small",
                 decode_batches=(1, 8, 64), prompt=32, new_tokens=128, clients=(1, 8, 32), client_tokens=64,
                 lora_model="gpt2-medium", lora_batch=16, lora_seq=512, family_models=("qwen3-0.6b", "gemma-3-270m"),
                 moe=dict(emb_dim=2048, n_heads=32, n_kv_heads=4, head_dim=128, n_experts=128, n_experts_active=8,
                          expert_hidden_dim=768, n_layers=4, vocab_size=2048, context_length=1024),
                 moe_batch=8, moe_seq=1024),
    "cpu": dict(model="gpt-tiny", batch=4, seq=64, steps=3, warmup=1, compile=False, decode_model="gpt-tiny",
                decode_batches=(1, 4), prompt=8, new_tokens=12, clients=(1, 2), client_tokens=8,
                lora_model="gpt-tiny", lora_batch=4, lora_seq=64, family_models=("qwen3-tiny", "gemma3-tiny"),
                moe=dict(n_layers=2), moe_batch=2, moe_seq=32),
}  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, steps: int, warmup: int) -> float:
    """Seconds per call of `fn` after `warmup` calls, the device drained before and after."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def decode_rate(run, device: str, rows: int, n_new: int) -> float | None:
    """Decode tokens/s of `run(n)` (n new tokens for `rows` rows): the time of n_new tokens minus the time of
    one (the prefill and its first token), each the best of three; None when noise swallows the difference."""
    full = min(timed(lambda: run(n_new), device, 1, 0) for _ in range(3))
    first = min(timed(lambda: run(1), device, 1, 0) for _ in range(3))
    return rows * (n_new - 1) / (full - first) if full > first else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def twin_hf(ours):
    """transformers' model for our architecture with our weights (the export the tests hold to our logits)."""
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf

    hf_config = transformers.AutoConfig.for_model(**config_to_hf(ours.config))
    hf = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    hf.load_state_dict(state_dict_to_hf(ours.state_dict(), ours.config), strict=False)
    return hf.to(ours.device)


def decode_row(preset: str, base, hf, prompts: list[list[int]], device: str, s: dict) -> dict:
    """Greedy decode tokens/s of `prompts` (one batch) on the engine, eager and (where `s` says) compiled,
    each on a fresh copy of `base`, and of transformers' `generate` on its twin `hf`, with the ratios."""
    from scratchllm.generation.engine import Engine, GenerationConfig
    from scratchllm.generation.generate import generate
    from scratchllm.models import build_model

    batch, n_new = len(prompts), s["new_tokens"]
    row = {}
    variants = [("eager", False)] + ([("compiled", True)] if s["compile"] else [])
    for name, compiled in variants:
        model = build_model(preset).to(device=device, dtype=base.dtype).eval()
        model.load_state_dict(base.state_dict())
        engine = Engine(model, max_batch=batch, max_seq_len=len(prompts[0]) + n_new, compile=compiled)

        def run(n: int, engine=engine, model=model) -> None:
            generate(model, prompts, GenerationConfig(max_new_tokens=n), engine=engine)

        timed(lambda: run(n_new), device, 1, 1)  # warm-up (and, compiled, the compilation and graph capture)
        row[f"{name}_tokens_per_s"] = decode_rate(run, device, batch, n_new)
        del engine, model
    ids = torch.tensor(prompts, device=device)

    def hf_run(n: int) -> None:
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=0)  # fmt: skip

    timed(lambda: hf_run(n_new), device, 1, 1)
    row["transformers_tokens_per_s"] = peer = decode_rate(hf_run, device, batch, n_new)
    for name, _ in variants:
        ours = row[f"{name}_tokens_per_s"]
        row[f"{name}_vs_transformers"] = ours / peer if ours and peer else None
    return row


# -- checks: each returns the figures of its JSON line -------------------------------------------------------
def check_pretrain(device: str, s: dict) -> dict:
    from scratchllm.hardware import matmul_peak, peak_memory_mib, resolve_dtype
    from scratchllm.models import build_model
    from scratchllm.models.stats import model_stats
    from scratchllm.training.loss import cross_entropy, lm_loss

    amp = resolve_dtype("auto", device)
    torch.manual_seed(0)
    ours = build_model(s["model"], drop_rate=0.0).to(device).train()
    hf = twin_hf(ours).train()
    seq = min(s["seq"], ours.config.context_length)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, ours.config.vocab_size, (s["batch"], seq + 1), generator=g).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]
    flops = model_stats(ours.config, seq).train_flops_per_token
    peak = matmul_peak(amp, device)
    out = {"model": s["model"], "batch": s["batch"], "seq": seq, "dtype": str(amp).replace("torch.", ""),
           "compiled": s["compile"], "peak_tflops": peak / 1e12}  # fmt: skip
    losses = {"ours": lambda m: lm_loss(m, inputs, targets), "transformers": lambda m: cross_entropy(m(inputs).logits,
                                                                                                   targets)}
    for name, model in (("ours", ours), ("transformers", hf)):
        loss_fn = losses[name]
        forward = torch.compile(loss_fn) if s["compile"] else loss_fn
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(model=model, forward=forward, opt=opt) -> None:
            with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp != torch.float32):
                loss = forward(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        reset_peak(device)
        seconds = timed(step, device, s["steps"], s["warmup"])
        tps = s["batch"] * seq / seconds
        out[f"{name}_tokens_per_s"] = tps
        out[f"{name}_mfu"] = tps * flops / peak
        out[f"{name}_peak_memory_mib"] = peak_memory_mib(device)
        del opt
    out["ratio_vs_transformers"] = out["ours_tokens_per_s"] / out["transformers_tokens_per_s"]
    out["goals_met"] = {"mfu >= 0.45": out["ours_mfu"] >= 0.45, "ratio >= 1.3": out["ratio_vs_transformers"] >= 1.3}
    return out


def check_decode(device: str, s: dict) -> dict:
    from scratchllm.hardware import resolve_dtype
    from scratchllm.models import build_model

    dtype = resolve_dtype("auto", device)
    torch.manual_seed(0)
    base = build_model(s["decode_model"]).to(device=device, dtype=dtype).eval()
    hf = twin_hf(base).to(dtype).eval()
    vocab, length = base.config.vocab_size, s["prompt"]
    rows = []
    for batch in s["decode_batches"]:
        prompts = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(batch)).tolist()
        rows.append({"batch": batch, **decode_row(s["decode_model"], base, hf, prompts, device, s)})
    out = {"model": s["decode_model"], "dtype": str(dtype).replace("torch.", ""), "prompt": length,
           "new_tokens": s["new_tokens"], "rows": rows}  # fmt: skip
    if s["compile"]:
        out["goals_met"] = {"compiled batch 1 >= 2x transformers": (rows[0]["compiled_vs_transformers"] or 0) >= 2}
    return out


def check_serve(device: str, s: dict) -> dict:
    for module in ("fastapi", "uvicorn", "httpx"):
        try:
            __import__(module)
        except ImportError:
            return {"status": "skipped", "reason": f"{module} is not installed here (pip install {module})"}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_serve import free_port, load, wait_up
    from scratchllm.assets import ASSETS
    from scratchllm.checkpoints.io import save_model
    from scratchllm.models import build_model
    from scratchllm.tokenizers.formats import load_tokenizer

    tokenizer = load_tokenizer("gpt2")
    story = tokenizer.encode((ASSETS / "the-verdict.txt").read_text(encoding="utf-8"))
    prompts = [tokenizer.decode(story[i : i + 32]) for i in range(0, 32 * 64, 32)]
    work = Path(tempfile.mkdtemp(prefix="gpu-check-serve-"))
    torch.manual_seed(0)
    save_model(build_model(s["decode_model"], vocab_size=tokenizer.vocab_size), work)
    tokenizer.save(work / "scratchllm-tokenizer.json")
    port = free_port()
    cmd = [sys.executable, "-m", "scratchllm", "serve", "--checkpoint", str(work), "--port", str(port),
           "--device", device, "--max-batch", str(max(s["clients"])), "--model-name", "check"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_up(server, url, 180):
            why = server.stderr.read()[-300:] if server.poll() is not None else "no answer within 180 s"
            raise RuntimeError(f"scratchllm serve did not start: {why}")
        load(url, "check", prompts[:2], 2, 1, 4)  # warm-up
        rows = []
        for clients in s["clients"]:
            row = load(url, "check", prompts, clients, 2, s["client_tokens"])
            row["vs_one_client"] = row["tokens_per_s"] / (rows[0]["tokens_per_s"] if rows else row["tokens_per_s"])
            rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"model": s["decode_model"], "max_tokens": s["client_tokens"], "rows": rows}


def check_lora(device: str, s: dict) -> dict:
    from scratchllm.hardware import peak_memory_mib, resolve_dtype
    from scratchllm.models import build_model
    from scratchllm.models.lora import LoRAConfig, apply_lora
    from scratchllm.training.loss import fused_linear_cross_entropy

    amp = resolve_dtype("auto", device)
    out = {"model": s["lora_model"], "batch": s["lora_batch"], "seq": s["lora_seq"],
           "dtype": str(amp).replace("torch.", "")}  # fmt: skip
    for variant in ("full", "lora"):
        torch.manual_seed(0)
        model = build_model(s["lora_model"], drop_rate=0.0).to(device).train()
        if variant == "lora":
            apply_lora(model, LoRAConfig(rank=16, alpha=16))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=5e-5, fused=True)
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, model.config.vocab_size, (s["lora_batch"], s["lora_seq"] + 1), generator=g).to(device)

        def step(model=model, opt=opt, x=x) -> None:  # what InstructTask.loss does, under the loop's autocast
            with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp != torch.float32):
                loss = fused_linear_cross_entropy(model.hidden(x[:, :-1]), model.head_weight, x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        reset_peak(device)
        seconds = timed(step, device, s["steps"], s["warmup"])
        out[f"{variant}_tokens_per_s"] = s["lora_batch"] * s["lora_seq"] / seconds
        out[f"{variant}_peak_memory_mib"] = peak_memory_mib(device)
        out[f"{variant}_trainable"] = sum(p.numel() for p in params)
        del model, opt
    out["lora_vs_full"] = out["lora_tokens_per_s"] / out["full_tokens_per_s"]
    return out


def check_families(device: str, s: dict) -> dict:
    from scratchllm.models import build_model
    from scratchllm.training.loss import cross_entropy, lm_loss

    decode = []
    for preset in s["family_models"]:  # fp32, batch 1: the setting
        torch.manual_seed(0)
        base = build_model(preset).to(device).eval()
        hf = twin_hf(base).eval()
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, base.config.vocab_size, (1, s["prompt"]), generator=g).tolist()
        row = {"model": preset, **decode_row(preset, base, hf, prompt, device, s)}
        best = max((v for k, v in row.items() if k.endswith("_vs_transformers") and v), default=None)
        row["best_vs_transformers"] = best
        decode.append(row)
        del base, hf
    torch.manual_seed(0)
    moe = build_model("qwen3-moe-tiny", **s["moe"], drop_rate=0.0).to(device)
    hf = twin_hf(moe)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, moe.config.vocab_size, (s["moe_batch"], s["moe_seq"] + 1), generator=g).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]
    experts = {"config": s["moe"], "tokens": s["moe_batch"] * s["moe_seq"]}
    for name, model, loss_fn, forward in (
        ("ours", moe, lambda: lm_loss(moe, inputs, targets), lambda: moe(inputs)),
        ("transformers", hf, lambda: cross_entropy(hf(inputs).logits, targets), lambda: hf(inputs).logits),
    ):
        model.eval()
        with torch.no_grad():
            experts[f"{name}_forward_ms"] = 1000 * timed(forward, device, s["steps"], s["warmup"])
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device != "cpu")

        def step(loss_fn=loss_fn, opt=opt) -> None:
            loss_fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        experts[f"{name}_train_step_ms"] = 1000 * timed(step, device, s["steps"], s["warmup"])
        del opt
    for mode in ("forward", "train_step"):
        experts[f"{mode}_vs_transformers"] = experts[f"transformers_{mode}_ms"] / experts[f"ours_{mode}_ms"]
    goals = {f"{r['model']} decode >= 1.5x transformers": (r["best_vs_transformers"] or 0) >= 1.5 for r in decode}
    goals |= {f"experts {mode} >= 2x transformers": experts[f"{mode}_vs_transformers"] >= 2
              for mode in ("forward", "train_step")}  # fmt: skip
    return {"dtype": "float32", "decode": decode, "experts": experts, "goals_met": goals}


def check_tests(device: str, s: dict) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "pytest is not installed here"}
    kind = torch.device(device).type
    # On a GPU every device-parametrised test runs on it; the smoke test runs the CPU parity tests only.
    target = ["tests"] if kind == "cuda" else ["tests/test_parity_hf.py"]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", kind, *target]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    failures = [line for line in lines if line.startswith("FAILED")]
    out = {"selection": f"-k {kind}", "summary": summary, "failed_tests": failures[:20]}
    if proc.returncode not in (0, 5):
        out["status"] = "failed"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the smoke test")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks (default: {','.join(CHECKS)})")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    from scratchllm.hardware import check_device, cpu_description

    device = check_device(args.device)
    kind = torch.device(device).type
    sizes = SIZES["cuda" if kind == "cuda" else "cpu"]
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := sorted(set(chosen) - set(CHECKS)):
        raise SystemExit(f"--only: unknown check {unknown[0]!r} (known: {', '.join(CHECKS)})")
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what training on a GPU uses for any fp32 product
        torch.backends.cudnn.allow_tf32 = True
    machine = torch.cuda.get_device_name(device) if kind == "cuda" else cpu_description()
    header = {"check": "machine", "status": "ok", "device": device, "name": machine, "torch": torch.__version__}
    lines = [header]
    print(json.dumps(header), flush=True)
    failed = 0
    for name in chosen:
        start = time.perf_counter()
        try:
            figures = globals()[f"check_{name}"](device, sizes)
            record = {"check": name, "status": "ok", **figures}
        except Exception as e:
            record = {"check": name, "status": "failed", "error": f"{type(e).__name__}: {e}"[:500],
                      "where": traceback.format_exc().strip().splitlines()[-3:]}  # fmt: skip
        failed += record["status"] == "failed"
        record["seconds"] = round(time.perf_counter() - start, 1)
        lines.append(record)
        print(json.dumps(record), flush=True)
        if kind == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
