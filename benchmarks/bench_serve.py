"""Serving benchmark: concurrent streaming clients against `scratchllm serve`, and against a peer server.

Every server gets the same model (gpt2-small architecture, random weights, written once as a scratchllm
folder, as its HuggingFace export and as a GGUF file of the same dtype), the same prompts (32-token slices
of The Verdict, or with `--mixed` slices of 32 to 960 tokens) and the same requests (greedy, `max_tokens`
new tokens each). For 1, 4, 8 and 16 concurrent clients, each sending `--rounds` requests one after
another (the single client sends what 8 send), it prints aggregate output tokens/s, time to first token
(p50/p95) and time per output token, and the throughput ratio against 1 client, i.e. the same requests
served one at a time (goals: >= 4x at 8 clients; TTFT p95 at 8 clients <= 2x the single client's).
Clients start at once, so each round's requests arrive as one burst; `--spread` adds, per level, a load
whose clients start spread over one request's duration, as independent users arrive. The peers are
`transformers serve` (continuous batching) and llama.cpp's server (llama-cpp-python's, one request at a
time), each where it starts here.

    .venv/bin/python benchmarks/bench_serve.py [--clients 1,4,8,16] [--max-tokens 64] [--dtype auto] [--mixed]
        [--spread] [--peers transformers,llamacpp]
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
        try:  # /health where the server has one; llama.cpp's answers /v1/models once its model is loaded
            if any(httpx.get(url + path, timeout=2).status_code == 200 for path in ("/health", "/v1/models")):
                return True
        except httpx.HTTPError:
            time.sleep(0.5)
    return False


def one_request(http: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = last = None
    tokens = pieces = 0
    with http.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                pieces += 1
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    tokens = tokens or pieces  # a server that reports no usage in streams (llama.cpp's): one piece per token
    first = first or time.perf_counter()
    last = last or first
    return {"ttft": first - start, "tpot": (last - first) / max(tokens - 1, 1), "tokens": tokens}


def load(url: str, model: str, prompts: list[str], clients: int, rounds: int, max_tokens: int,
         spread: float = 0.0) -> dict:
    """`clients` threads, each sending `rounds` requests one after another; with `spread` seconds, client k
    starts k / clients of it after the first (arrivals spread out, as independent users' are), else all at
    once (a burst: with equal prompts and outputs they stay in step, so every round arrives as one)."""
    results: list[dict] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def client(k: int, http: httpx.Client) -> None:
        time.sleep(spread * k / clients)
        for j in range(rounds):
            try:
                r = one_request(http, url, model, prompts[(k * rounds + j) % len(prompts)], max_tokens)
            except Exception as e:  # the load's caller reports it
                errors.append(e)
                return
            with lock:
                results.append(r)

    # One connection pool per client, made before the clock starts, as real clients keep theirs: making an
    # httpx client costs ~50 ms (its TLS context), which per request would be counted as the server's TTFT.
    pools = [httpx.Client() for _ in range(clients)]
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k, pools[k])) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for http in pools:
        http.close()
    if errors:
        raise errors[0]
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "clients": clients,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "tpot": statistics.median(r["tpot"] for r in results),
        "tokens": sum(r["tokens"] for r in results),
        "requests": len(results),
    }


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


def start_server(name: str, command: list[str], url: str, env: dict) -> subprocess.Popen | None:
    # Its log goes to a file: an unread pipe fills up and blocks a server that logs every request (llama.cpp's).
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    if wait_up(proc, url, 180):
        return proc
    log.flush()
    why = Path(log.name).read_text()[-400:] if proc.poll() is not None else "no answer within 180 s"
    print(f"{name} did not start here: {why}")
    stop(proc)
    return None


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_prompts(tokenizer, story: list[int], mixed: bool, longest: int) -> list[str]:
    """64 prompts: 32-token slices, or with `mixed` lengths spread log-uniformly over 32..`longest` tokens."""
    if not mixed:
        return [tokenizer.decode(story[i : i + 32]) for i in range(0, 32 * 64, 32)]
    import random

    rng = random.Random(0)
    lengths = [int(32 * (longest / 32) ** rng.random()) for _ in range(64)]
    starts = [rng.randrange(0, len(story) - n) for n in lengths]
    return [tokenizer.decode(story[s : s + n]) for s, n in zip(starts, lengths)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--mixed", action="store_true", help="prompts of 32 to 1,024 tokens instead of 32")
    p.add_argument("--spread", action="store_true", help="also a load per level whose clients start spread over "
                   "one request's duration at 1 client, instead of all at once")  # fmt: skip
    p.add_argument("--peers", default="transformers,llamacpp", help="comma list, or 'none'")
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
    # The longest mixed prompt leaves room for the new tokens in GPT-2's context of 1,024.
    longest = 1024 - args.max_tokens
    prompts = make_prompts(tokenizer, story, args.mixed, longest)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    torch.manual_seed(0)
    model = build_model(args.model)
    save_model(model, work / "ours")
    tokenizer.save(work / "ours" / "scratchllm-tokenizer.json")
    to_hf(model, tokenizer, work / "hf")
    del model
    dtype = str(resolve_dtype(args.dtype, "cpu")).replace("torch.", "")
    peers = [] if args.peers == "none" else args.peers.split(",")
    short = {"float32": "fp32", "bfloat16": "bf16"}[dtype]  # every server runs this one dtype
    lengths = f"32 to {longest:,}" if args.mixed else "32"
    print(f"model {args.model} (random weights), prompts of {lengths} tokens, {args.max_tokens} new tokens per "
          f"request, greedy, {args.rounds} requests per client; {dtype} for every server", flush=True)  # fmt: skip
    header = (f"{'server':26s} {'clients':>7s} {'tokens/s':>12s} {'vs 1':>8s} {'TTFT p50':>9s} "
              f"{'TTFT p95':>9s} {'TPOT ms':>9s}")
    print(header)
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 2))
    bin_dir = Path(sys.executable).parent
    results: dict[str, list[dict]] = {}
    failed: set[str] = set()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers = [("scratchllm serve", "bench", [str(bin_dir / "scratchllm"), "serve", "--checkpoint", str(work / "ours"),
                "--port", str(port), "--max-batch", str(max(levels)), "--dtype", short, "--model-name", "bench"],
                url)]  # fmt: skip
    if "transformers" in peers:
        port = free_port()
        servers.append(("transformers serve", str(work / "hf"), [str(bin_dir / "transformers"), "serve",
                        str(work / "hf"), "--port", str(port), "--continuous-batching", "--dtype", dtype, "--device",
                        "cpu"], f"http://127.0.0.1:{port}"))  # fmt: skip
    if "llamacpp" in peers:
        from scratchllm.checkpoints.gguf import to_gguf

        gguf_type = {"fp32": "f32", "bf16": "bf16"}[short]
        to_gguf(_load(work / "ours"), tokenizer, work / "model.gguf", gguf_type)
        port = free_port()
        servers.append(("llama.cpp server", "bench", [sys.executable, "-m", "llama_cpp.server", "--model",
                        str(work / "model.gguf"), "--model_alias", "bench", "--n_ctx", "2048", "--n_threads",
                        str(os.cpu_count() or 2), "--interrupt_requests", "False", "--port", str(port)],
                        f"http://127.0.0.1:{port}"))  # fmt: skip
    # Every server is up at once and the loads alternate between them level by level: this VM's speed drifts
    # by 2-5x within minutes, so only loads measured side by side compare (an idle server waits, it does not spin).
    procs = {}
    try:
        for name, model_id, command, url in servers:
            proc = start_server(name, command, url, env)
            if proc is not None:
                procs[name] = proc
                load(url, model_id, prompts[-2:], 2, 1, 4)  # warm-up, on prompts no load sends
        for c in levels:
            for name, model_id, _, url in servers:
                for spread in (False, True) if args.spread and c > 1 else (False,):
                    if name not in procs or name in failed:
                        continue
                    label = name + (" (spread)" if spread else "")
                    rows = results.setdefault(label, [])
                    seconds = 0.0
                    if spread:  # one request's duration at 1 client
                        one = results[name][0]
                        seconds = one["tokens"] / one["tokens_per_s"] / one["requests"]
                    try:
                        # One client sends what 8 do (or the most clients asked for), one request at a time:
                        # "vs 1" then compares the same requests, mixed lengths included.
                        rounds = args.rounds * (min(8, max(levels)) if c == 1 else 1)
                        row = load(url, model_id, prompts, c, rounds, args.max_tokens, seconds)
                    except Exception as e:  # a peer that starts but fails requests is reported, not fatal
                        print(f"{name} failed a request: {e}")
                        failed.add(name)
                        continue
                    base = results[name][0]["tokens_per_s"] if results[name] else row["tokens_per_s"]
                    row["ratio"] = row["tokens_per_s"] / base
                    rows.append(row)
                    print(f"{label:26s} {c:7d} {row['tokens_per_s']:12.1f} {row['ratio']:7.2f}x "
                          f"{row['ttft_p50'] * 1e3:9.0f} {row['ttft_p95'] * 1e3:9.0f} {row['tpot'] * 1e3:9.1f}",
                          flush=True)  # fmt: skip
    finally:
        for proc in procs.values():
            stop(proc)
    results = {k: v for k, v in results.items() if v and k.removesuffix(" (spread)") not in failed}
    mine = results.get("scratchllm serve", [])
    by = {r["clients"]: r for r in mine}
    if 1 in by:  # where a single client's decode goes: the same requests on the engine in this process
        alone = in_process(work / "ours", tokenizer, prompts[: args.rounds], args.max_tokens, short)
        print(f"\none client, served: {by[1]['tokens_per_s']:.1f} tokens/s, TPOT {by[1]['tpot'] * 1e3:.1f} ms; the "
              f"same requests on the engine in-process (no HTTP, no client): {alone:.1f} tokens/s "
              f"({by[1]['tokens_per_s'] / alone:.2f}x)")
    if 8 in by and 1 in by:
        print(f"\naggregate throughput at 8 clients vs one at a time: {by[8]['ratio']:.2f}x (goal >= 4x)")
        one = by[1]
        for label, rows in (("arriving at once", mine), ("arriving spread out",
                                                          results.get("scratchllm serve (spread)", []))):
            eight = {r["clients"]: r for r in rows}.get(8)
            if eight:  # against one client's p50 (the goal's "single-client TTFT") and p95 (the same requests)
                print(f"TTFT p95 at 8 clients {label}: {eight['ttft_p95'] * 1e3:.0f} ms, "
                      f"{eight['ttft_p95'] / one['ttft_p50']:.2f}x one client's p50 ({one['ttft_p50'] * 1e3:.0f} ms), "
                      f"{eight['ttft_p95'] / one['ttft_p95']:.2f}x its p95 ({one['ttft_p95'] * 1e3:.0f} ms); "
                      "goal <= 2x")
    for name, rows in results.items():
        if name.startswith("scratchllm serve") or name.endswith("(spread)"):
            continue
        theirs = {r["clients"]: r for r in rows}
        ratios = ", ".join(f"{c} clients {by[c]['tokens_per_s'] / theirs[c]['tokens_per_s']:.2f}x"
                           for c in levels if c in by and c in theirs)  # fmt: skip
        print(f"scratchllm vs {name}, aggregate tokens/s: {ratios}")
    print(json.dumps(results))
    if not args.mixed:
        bench_prefix_reuse(args.model, args.max_tokens)


def in_process(folder: Path, tokenizer, prompts: list[str], max_tokens: int, dtype: str) -> float:
    """Output tokens/s of `prompts` generated one after another on an Engine in this process."""
    import torch

    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.generation.engine import Engine, GenerationConfig

    torch.set_num_threads(os.cpu_count() or 2)
    engine = Engine(load_checkpoint(folder, dtype, "cpu").model, tokenizer, max_batch=1)
    engine.run([engine.submit(tokenizer.encode(prompts[0]), GenerationConfig(max_new_tokens=4))])  # warm-up
    start, tokens = time.perf_counter(), 0
    for p in prompts:
        r = engine.submit(tokenizer.encode(p), GenerationConfig(max_new_tokens=max_tokens))
        engine.run([r])
        tokens += len(r.tokens)
    return tokens / (time.perf_counter() - start)


def _load(folder: Path):
    from scratchllm.checkpoints.load import load_checkpoint

    return load_checkpoint(folder, "fp32", "cpu").model


if __name__ == "__main__":
    main()
