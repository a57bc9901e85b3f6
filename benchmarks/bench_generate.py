"""Decode benchmark: our KV-cache generation vs transformers' `generate`, llama.cpp and the book's uncached loop.

Same process, same weights (gpt2-small by default, random init), batch 1, 2 threads, greedy, a 32-token
prompt. Decode is memory-bound: every new token reads all weights once, so the script also measures this
machine's memory bandwidth (a large tensor copy) and prints the bandwidth our decode achieves. A model with
sliding-window layers (Gemma 3) also reports its KV-cache bytes at 8k context against a full cache.
llama.cpp (llama-cpp-python, `make` builds it) decodes our own GGUF export of the same weights, 2 threads,
in each precision beside ours: f32 / fp32, f16 and bf16 / our bf16, q8_0 / our int8, q4_0 / our int4.

    .venv/bin/python benchmarks/bench_generate.py [--model gpt2-small] [--new-tokens 256] [--dtypes fp32,bf16]
    .venv/bin/python benchmarks/bench_generate.py --model gemma-3-270m,qwen3-0.6b --dtypes fp32 --new-tokens 64
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small", help="preset, or several separated by commas")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--uncached-tokens", type=int, default=None, help="tokens for the slow uncached loop (default: all)")
    p.add_argument("--dtypes", default=None, help="comma-separated (default: fp32, plus bf16 where it is native)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile decode measurement")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds (medians) of ours / transformers and of ours / llama.cpp")
    args = p.parse_args()
    args.uncached_tokens = args.uncached_tokens or args.new_tokens
    torch.set_num_threads(2)
    from scratchllm.hardware import cpu_description, cpu_has_bf16, memory_bandwidth

    print(f"CPU: {cpu_description()}", flush=True)
    dtypes = (args.dtypes or ("fp32,bf16" if cpu_has_bf16() else "fp32")).split(",")
    if "bf16" in dtypes and not cpu_has_bf16():
        print("note: bf16 is emulated on this CPU: its figures show the emulation, not the code", flush=True)

    bandwidth = memory_bandwidth()
    for name in args.model.split(","):
        print(
            f"\nmemory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s; model {name}, batch 1, greedy, "
            f"prompt {args.prompt_len}, {args.new_tokens} new tokens"
        )
        bench_model(argparse.Namespace(**{**vars(args), "model": name}), dtypes, bandwidth)
        if not args.no_llama_cpp:
            bench_llama_cpp(argparse.Namespace(**{**vars(args), "model": name}), bandwidth)


class LlamaCppDecoder:
    """llama.cpp's greedy decode on one GGUF file, 2 threads, batch 1: tokens/s after the prompt."""

    def __init__(self, path, slots: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=slots, n_batch=slots, n_threads=2, n_threads_batch=2,
                                   verbose=False)  # fmt: skip

    def __call__(self, prompt: list[int], new_tokens: int) -> float:
        import numpy as np

        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return (new_tokens - 1) / (time.perf_counter() - start)


def bench_llama_cpp(args: argparse.Namespace, bandwidth: float) -> None:
    """llama.cpp on our GGUF export of the same random weights, each precision against our matching path,
    the two decoding in turn (`--rounds` times, medians) so that a busy machine slows both alike."""
    import statistics
    import tempfile
    from pathlib import Path

    import gguf

    from scratchllm.checkpoints.gguf import to_gguf
    from scratchllm.generation import packed
    from scratchllm.generation.engine import Engine
    from scratchllm.generation.generate import GenerationConfig, generate
    from scratchllm.models import build_model
    from scratchllm.tokenizers.formats import load_tokenizer

    torch.manual_seed(0)
    base = build_model(args.model).eval()
    prompt = torch.randint(0, base.config.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0))
    prompt = prompt.tolist()
    tokenizer = load_tokenizer("gpt2")
    if tokenizer.vocab_size > base.config.vocab_size:
        print(f"\nllama.cpp: skipped (model {args.model} has fewer than the GPT-2 tokenizer's rows)")
        return
    print(f"\nllama.cpp (llama-cpp-python) on our GGUF export against our eager engine, 2 threads, "
          f"{args.new_tokens} new tokens, medians of {args.rounds} alternating rounds:")  # fmt: skip
    slots = len(prompt) + args.new_tokens
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    pairs = (("f32", torch.float32, None), ("f16", torch.bfloat16, None), ("bf16", torch.bfloat16, None),
             ("q8_0", torch.bfloat16, "int8"), ("q4_0", torch.bfloat16, "int4"))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for qtype, dtype, quantize in pairs:
            path = to_gguf(base, tokenizer, Path(tmp) / f"m-{qtype}.gguf", qtype)
            size = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
            theirs_decode = LlamaCppDecoder(path, slots)
            ours = build_model(args.model).eval()
            ours.load_state_dict(base.state_dict())
            engine = Engine(ours.to(dtype), max_batch=1, max_seq_len=slots, quantize=quantize)
            with torch.inference_mode():
                generate(ours, [prompt], GenerationConfig(max_new_tokens=4), engine=engine)  # warm-up
                mine, theirs = [], []
                for _ in range(args.rounds):
                    mine.append(generate(ours, [prompt], cfg, engine=engine).decode_tokens_per_s)
                    theirs.append(theirs_decode(prompt, args.new_tokens))
            theirs_decode.llm.close()
            path.unlink()
            m, t = statistics.median(mine), statistics.median(theirs)
            label = f"{str(dtype).replace('torch.', '')}" + (f"+{quantize}" if quantize else "")
            print(f"  llama.cpp {qtype:5s} {t:6.1f} tokens/s ({t * size / bandwidth:4.0%} of the bandwidth for its "
                  f"{size / 1e6:.0f} MB)   ours {label:13s} {m:6.1f} tokens/s   ours/llama.cpp {m / t:.2f}x "
                  f"(rounds {min(a / b for a, b in zip(mine, theirs)):.2f}-"
                  f"{max(a / b for a, b in zip(mine, theirs)):.2f}x)")  # fmt: skip
    chosen = {f"{o}x{i} {str(d).replace('torch.', '')}": k for (o, i, d, _), k in packed._ONE_ROW.items()}
    print(f"  one-row kernels the engine chose: {chosen}")


def kv_cache_report(config) -> None:
    """A sliding-window model's KV cache at 8k context against a cache of every layer at full length."""
    from scratchllm.models.attention import KVCache

    cache = KVCache.allocate(config, 1, 8192, torch.bfloat16, device="meta")
    ours = sum(k.numel() * 2 * 2 for k in cache.k)
    full = config.n_layers * config.n_kv_heads * 8192 * config.head_dim * 2 * 2
    print(f"  KV cache at 8k context (bf16, k+v): {ours / 2**20:.0f} MiB vs {full / 2**20:.0f} MiB full "
          f"({ours / full:.0%}, target <= 30%)")


def bench_model(args: argparse.Namespace, dtypes: list[str], bandwidth: float) -> None:
    """Our decode (eager and compiled) against transformers and the products alone (`decode_rounds`), then
    int8/int4 and the book's uncached loop."""
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf
    from scratchllm.generation.generate import GenerationConfig, generate, generate_text_simple
    from scratchllm.models import build_model

    torch.manual_seed(0)
    base = build_model(args.model).eval()
    prompt = torch.randint(0, base.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(base.config))
    if base.config.sliding_window:
        kv_cache_report(base.config)
    for dtype_name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        numel = sum(t.numel() for t in base.state_dict().values())
        numel -= base.out_head.weight.numel() * base.config.tie_embeddings  # a tied head is read once
        weight_bytes = numel * torch.empty(0, dtype=dtype).element_size()
        eager_engine = _engine(args, base, dtype)
        ms, results, compile_seconds = decode_rounds(args, base, eager_engine, prompt, hf_config)
        ours = eager_engine[0]
        with torch.inference_mode():
            start = time.perf_counter()
            generate_text_simple(ours, prompt, args.uncached_tokens, ours.config.context_length)
            book_tps = args.uncached_tokens / (time.perf_counter() - start)
        eager, hf_tokens = results["eager"], results["hf"][0, args.prompt_len :].tolist()
        print(
            f"\n[{dtype_name}] weights {weight_bytes / 1e6:.0f} MB read per token; ceiling "
            f"{bandwidth / weight_bytes:.0f} tokens/s at the measured bandwidth; medians of {args.rounds} "
            "alternating rounds, decode alone (prefill excluded on every side)"
        )
        for name, label in (("eager", "scratchllm generate (KV cache)"), ("compiled", "scratchllm generate --compile")):
            if name in ms:
                gbs = weight_bytes / ms[name] / 1e6
                extra = f"; compiled in {compile_seconds:.0f} s" if name == "compiled" else ""
                print(
                    f"  {label:32s} {1e3 / ms[name]:7.1f} tokens/s {ms[name]:6.1f} ms  ratio ours/HF "
                    f"{ms['transformers'] / ms[name]:.2f}x (target >= 1.5x)  bandwidth {gbs:5.1f} GB/s "
                    f"({gbs * 1e9 / bandwidth:.0%}){extra}"
                )
        hf_ms = ms["transformers"]
        print(f"  transformers generate (cache)    {1e3 / hf_ms:7.1f} tokens/s {hf_ms:6.1f} ms")
        print(
            f"  products alone (torch.mv, each weight once)     {ms['products']:6.1f} ms: the floor of a step on "
            f"torch's kernels; transformers / floor {hf_ms / ms['products']:.2f}x is the most any step on them gains"
        )
        print(
            f"  book loop, no cache ({args.uncached_tokens} tokens)   {book_tps:7.1f} tokens/s"
            f"   ratio ours/uncached {1e3 / ms['eager'] / book_tps:.1f}x (target >= 5x)"
        )
        print(f"  first 32 greedy tokens identical to transformers: {eager.tokens[0][:32] == hf_tokens[:32]}")
        if "compiled" in results:
            same = sum(a == b for a, b in zip(results["compiled"].tokens[0], eager.tokens[0]))
            print(f"  compiled: {same}/{len(eager.tokens[0])} greedy tokens as eager")
        if dtype == torch.bfloat16:
            cfg = GenerationConfig(max_new_tokens=args.new_tokens)
            for bits in ("int8", "int4"):
                q, q_engine = _engine(args, base, dtype, quantize=bits)
                with torch.inference_mode():
                    generate(q, [prompt[0].tolist()], GenerationConfig(max_new_tokens=4), engine=q_engine)
                    tps = generate(q, [prompt[0].tolist()], cfg, engine=q_engine).decode_tokens_per_s
                print(
                    f"  scratchllm {bits} weights (bf16 activations) {tps:7.1f} tokens/s   ratio vs transformers "
                    f"bf16 {tps * hf_ms / 1e3:.2f}x, vs our bf16 {tps * ms['eager'] / 1e3:.2f}x"
                )


def _engine(args: argparse.Namespace, base, dtype, **kw):
    """A copy of `base` in `dtype` and an engine for it (batch 1, the prompt and its new tokens)."""
    from scratchllm.generation.engine import Engine
    from scratchllm.models import build_model

    model = build_model(args.model).eval()
    model.load_state_dict(base.state_dict())
    return model, Engine(model.to(dtype), max_batch=1, max_seq_len=args.prompt_len + args.new_tokens, **kw)


def decode_rounds(args: argparse.Namespace, base, eager: tuple, prompt: torch.Tensor, hf_config):
    """Milliseconds per decoded token of our eager engine (`eager`: a model and its engine, `_engine`), of a
    compiled one, of transformers' `generate` (a 2-token call's time taken off, so decode alone as ours) and
    of the products alone (every weight matrix once through torch.mv, no model around them), measured in turn
    `--rounds` times: medians, as this machine's speed drifts. Returns (medians, each run's last result, the
    compile's seconds)."""
    import statistics

    import transformers

    from scratchllm.checkpoints.hf import state_dict_to_hf
    from scratchllm.generation.generate import GenerationConfig, generate

    ids, cfg, dtype = prompt[0].tolist(), GenerationConfig(max_new_tokens=args.new_tokens), eager[0].dtype
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    hf.load_state_dict(state_dict_to_hf(base.state_dict(), base.config), strict=False)
    hf.to(dtype)
    # the products a step of ours runs (HF's GPT-2 keeps its matrices in Conv1D modules, transposed)
    matrices = [m.weight.detach().to(dtype) for m in base.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.ones(w.shape[1], dtype=dtype) for w in matrices}
    mask = torch.ones_like(prompt)
    results: dict[str, object] = {}

    def ours(name: str, model, engine) -> float:
        results[name] = generate(model, [ids], cfg, engine=engine)
        return 1e3 / results[name].decode_tokens_per_s

    def theirs() -> float:
        kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0)
        start = time.perf_counter()
        hf.generate(prompt, max_new_tokens=2, min_new_tokens=2, **kw)
        middle = time.perf_counter()
        results["hf"] = hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kw)
        return 1e3 * ((time.perf_counter() - middle) - (middle - start)) / (args.new_tokens - 2)

    def products() -> float:
        start = time.perf_counter()
        for _ in range(16):
            for w in matrices:
                torch.mv(w, vectors[w.shape[1]])
        return 1e3 * (time.perf_counter() - start) / 16

    runs = {"eager": lambda: ours("eager", *eager), "transformers": theirs, "products": products}
    compile_seconds = None
    with torch.inference_mode():
        if not args.no_compile:
            compiled = _engine(args, base, dtype, compile=True)
            start = time.perf_counter()
            generate(compiled[0], [ids], GenerationConfig(max_new_tokens=4), engine=compiled[1])  # compiles
            compile_seconds = time.perf_counter() - start
            runs["compiled"] = lambda: ours("compiled", *compiled)
        for run in runs.values():
            run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(runs[name]())
    return {name: statistics.median(t) for name, t in times.items()}, results, compile_seconds


if __name__ == "__main__":
    main()
