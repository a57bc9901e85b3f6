"""Serving benchmark: concurrent streaming clients against `scratchllm serve`, and against a peer server.

Both servers get the same model (gpt2-small architecture, random weights, written once as a scratchllm
folder and as its HuggingFace export), the same prompts (32-token slices of The Verdict) and the same
requests (greedy, `max_tokens` new tokens each). For 1, 4, 8 and 16 concurrent clients, each sending
`--rounds` requests one after another, it prints aggregate output tokens/s, time to first token (p50/p95)
and time per output token, and the throughput ratio against 1 client, i.e. the same requests served one
at a time (goal: >= 4x at 8 clients). The peer is `transformers serve` (with continuous batching) when it
starts here; its figures are printed beside ours.

    .venv/bin/python benchmarks/bench_serve.py [--clients 1,4,8,16] [--max-tokens 64] [--dtype auto]
    .venv/bin/python benchmarks/bench_serve.py --prefix-only     # the shared-system-prompt comparison alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc: subprocess.Popen, url: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.5)
    return False


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    first = first or time.perf_counter()
    last = last or first
    return {"ttft": first - start, "tpot": (last - first) / max(tokens - 1, 1), "tokens": tokens}


def load(url: str, model: str, prompts: list[str], clients: int, rounds: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(rounds):
            r = one_request(url, model, prompts[(k * rounds + j) % len(prompts)], max_tokens)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "clients": clients,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "tpot": statistics.median(r["tpot"] for r in results),
        "tokens": sum(r["tokens"] for r in results),
    }


def run_levels(name: str, url: str, model: str, prompts, levels, rounds, max_tokens) -> list[dict]:
    load(url, model, prompts[:2], 2, 1, 4)  # warm-up
    rows = []
    for c in levels:
        row = load(url, model, prompts, c, rounds, max_tokens)
        base = rows[0]["tokens_per_s"] if rows else row["tokens_per_s"]
        row["ratio"] = row["tokens_per_s"] / base
        rows.append(row)
        print(f"{name:22s} {c:7d} {row['tokens_per_s']:12.1f} {row['ratio']:7.2f}x {row['ttft_p50'] * 1e3:9.0f} "
              f"{row['ttft_p95'] * 1e3:9.0f} {row['tpot'] * 1e3:9.1f}", flush=True)  # fmt: skip
    return rows


def bench_prefix_reuse(model_name: str, max_tokens: int, system_len: int = 512, requests: int = 8) -> None:
    """Requests sharing a `system_len`-token system prompt (each with its own 16-token question), one after
    another, on the engine with its prefix cache and without, in the same process: time to first token and
    requests/s, and whether the answers are the same."""
    import torch

    from scratchllm.generation.engine import Engine, GenerationConfig
    from scratchllm.models import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    g = torch.Generator().manual_seed(1)
    system = torch.randint(0, model.config.vocab_size, (system_len,), generator=g).tolist()
    asks = [system + torch.randint(0, model.config.vocab_size, (16,), generator=g).tolist() for _ in range(requests)]
    cfg = GenerationConfig(max_new_tokens=max_tokens)
    results = {}
    with torch.inference_mode():
        for cached in (False, True):
            engine = Engine(model, max_batch=1, max_seq_len=system_len + 16 + max_tokens, prefix_cache=cached)
            engine.submit(asks[0][:32], GenerationConfig(max_new_tokens=2))  # warm-up
            engine.run()
            start = time.perf_counter()
            ttft, tokens = [], []
            for prompt in asks:
                r = engine.submit(prompt, cfg)
                engine.run()
                ttft.append(r.first_token_at - r.submitted_at)
                tokens.append(r.tokens)
            results[cached] = (time.perf_counter() - start, statistics.median(ttft), tokens, engine.stats)
    (cold_s, cold_ttft, cold_tokens, _), (warm_s, warm_ttft, warm_tokens, stats) = results[False], results[True]
    rate = stats.prefix_tokens / stats.prompt_tokens
    print(f"\nshared {system_len}-token system prompt, {requests} requests one after another, {max_tokens} tokens each "
          f"({model_name}, in-process engine):")
    print(f"  without the prefix cache: {requests / cold_s:5.2f} requests/s, TTFT p50 {cold_ttft * 1000:6.0f} ms")
    print(f"  with the prefix cache:    {requests / warm_s:5.2f} requests/s, TTFT p50 {warm_ttft * 1000:6.0f} ms   "
          f"{cold_s / warm_s:.2f}x throughput, TTFT {cold_ttft / warm_ttft:.1f}x lower; hit rate {rate:.0%}; "
          f"same tokens: {warm_tokens == cold_tokens}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    p.add_argument("--prefix-only", action="store_true", help="only the shared-system-prompt comparison")
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if args.prefix_only:
        bench_prefix_reuse(args.model, args.max_tokens)
        return

    import torch

    from scratchllm.assets import ASSETS
    from scratchllm.checkpoints.convert import to_hf
    from scratchllm.checkpoints.io import save_model
    from scratchllm.hardware import cpu_description, resolve_dtype
    from scratchllm.models import build_model
    from scratchllm.tokenizers.formats import load_tokenizer

    print(f"CPU: {cpu_description()}", flush=True)
    tokenizer = load_tokenizer("gpt2")
    story = tokenizer.encode((ASSETS / "the-verdict.txt").read_text(encoding="utf-8"))
    prompts = [tokenizer.decode(story[i : i + 32]) for i in range(0, 32 * 64, 32)]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    torch.manual_seed(0)
    model = build_model(args.model)
    save_model(model, work / "ours")
    tokenizer.save(work / "ours" / "scratchllm-tokenizer.json")
    to_hf(model, tokenizer, work / "hf")
    del model
    dtype = str(resolve_dtype(args.dtype, "cpu")).replace("torch.", "")
    print(f"model {args.model} (random weights), {args.max_tokens} new tokens per request, greedy, "
          f"{args.rounds} requests per client; {dtype} for both servers", flush=True)  # fmt: skip
    header = (f"{'server':22s} {'clients':>7s} {'tokens/s':>12s} {'vs 1':>8s} {'TTFT p50':>9s} "
              f"{'TTFT p95':>9s} {'TPOT ms':>9s}")
    print(header)
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 2))
    port = free_port()
    cli = Path(sys.executable).with_name("scratchllm")
    ours = subprocess.Popen([str(cli), "serve", "--checkpoint", str(work / "ours"), "--port", str(port),
                             "--max-batch", str(max(levels)), "--dtype", args.dtype, "--model-name", "bench"],
                            env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_up(ours, url, 120):
            raise SystemExit("scratchllm serve did not start")
        mine = run_levels("scratchllm serve", url, "bench", prompts, levels, args.rounds, args.max_tokens)
    finally:
        ours.terminate()
        ours.wait(timeout=60)
    peer = None
    if not args.no_peer:
        port = free_port()
        tf = Path(sys.executable).with_name("transformers")
        proc = subprocess.Popen([str(tf), "serve", str(work / "hf"), "--port", str(port), "--continuous-batching",
                                 "--dtype", dtype, "--device", "cpu"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            if wait_up(proc, url, 180):
                try:
                    peer = run_levels("transformers serve", url, str(work / "hf"), prompts, levels, args.rounds,
                                      args.max_tokens)  # fmt: skip
                except Exception as e:  # a peer that starts but fails requests is reported, not fatal
                    print(f"transformers serve failed a request: {e}")
            else:
                why = proc.stderr.read()[-400:] if proc.poll() is not None else "no answer within 180 s"
                print(f"transformers serve did not start here: {why}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    at8 = next((r for r in mine if r["clients"] == 8), None)
    if at8:
        print(f"\naggregate throughput at 8 clients vs one at a time: {at8['ratio']:.2f}x (goal >= 4x)")
        if peer:
            p8 = next((r for r in peer if r["clients"] == 8), None)
            if p8:
                print(f"scratchllm vs transformers serve at 8 clients: {at8['tokens_per_s'] / p8['tokens_per_s']:.2f}x")
    print(json.dumps({"ours": mine, "transformers": peer}))
    bench_prefix_reuse(args.model, args.max_tokens)


if __name__ == "__main__":
    main()
