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
    p.add_argument("--rounds", type=int, default=3, help="alternating ours / llama.cpp rounds per precision")
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
    """Our decode (eager, compiled, int8, int4) against transformers and the book's loop."""
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf
    from scratchllm.generation.engine import Engine
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
        ours = build_model(args.model).eval()
        ours.load_state_dict(base.state_dict())
        slots = args.prompt_len + args.new_tokens
        ours.to(dtype)  # weights read per token, counted before the engine packs them out of state_dict()
        weight_bytes = sum(t.numel() * t.element_size() for t in ours.state_dict().values() if t is not None)
        weight_bytes -= ours.out_head.weight.numel() * ours.out_head.weight.element_size() * ours.config.tie_embeddings
        engine = Engine(ours.to(dtype), max_batch=1, max_seq_len=slots)  # fp32 on CPU: oneDNN-packed weights
        hf = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
        hf.load_state_dict(state_dict_to_hf(base.state_dict(), base.config), strict=False)
        hf.to(dtype)
        cfg = GenerationConfig(max_new_tokens=args.new_tokens)
        with torch.inference_mode():
            generate(ours, [prompt[0].tolist()], GenerationConfig(max_new_tokens=4), engine=engine)  # warm-up
            result = generate(ours, [prompt[0].tolist()], cfg, engine=engine)
            ours_tps = result.decode_tokens_per_s
            hf.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
            start = time.perf_counter()
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            hf_seconds = time.perf_counter() - start
            hf_tps = (out.shape[1] - prompt.shape[1]) / hf_seconds
            start = time.perf_counter()
            generate_text_simple(ours, prompt, args.uncached_tokens, ours.config.context_length)
            book_tps = args.uncached_tokens / (time.perf_counter() - start)
        same = result.tokens[0][:32] == out[0, args.prompt_len : args.prompt_len + 32].tolist()
        achieved = ours_tps * weight_bytes
        print(
            f"\n[{dtype_name}] weights {weight_bytes / 1e6:.0f} MB read per token; ceiling "
            f"{bandwidth / weight_bytes:.0f} tokens/s at the measured bandwidth"
        )
        print(
            f"  scratchllm generate (KV cache)   {ours_tps:7.1f} tokens/s  "
            f"prefill {result.prefill_tokens_per_s:7.0f} tok/s"
            f"  bandwidth {achieved / 1e9:5.1f} GB/s ({achieved / bandwidth:.0%})"
        )
        print(
            f"  transformers generate (cache)    {hf_tps:7.1f} tokens/s (whole call, prefill included)"
            f"   ratio ours/HF {ours_tps / hf_tps:.2f}x (target >= 1.5x)"
        )
        print(
            f"  book loop, no cache ({args.uncached_tokens} tokens)   {book_tps:7.1f} tokens/s"
            f"   ratio ours/uncached {ours_tps / book_tps:.1f}x (target >= 5x)"
        )
        print(f"  first 32 greedy tokens identical to transformers: {same}")
        if not args.no_compile:
            c = build_model(args.model).eval()
            c.load_state_dict(base.state_dict())
            c_engine = Engine(c.to(dtype), max_batch=1, max_seq_len=slots, compile=True)
            with torch.inference_mode():
                start = time.perf_counter()
                generate(c, [prompt[0].tolist()], GenerationConfig(max_new_tokens=4), engine=c_engine)  # compiles
                compile_seconds = time.perf_counter() - start
                c_result = generate(c, [prompt[0].tolist()], cfg, engine=c_engine)
            c_tps = c_result.decode_tokens_per_s
            c_same = sum(a == b for a, b in zip(c_result.tokens[0], result.tokens[0]))
            print(
                f"  scratchllm generate --compile    {c_tps:7.1f} tokens/s   ratio ours/HF {c_tps / hf_tps:.2f}x, "
                f"vs eager {c_tps / ours_tps:.2f}x; bandwidth {c_tps * weight_bytes / 1e9:5.1f} GB/s "
                f"({c_tps * weight_bytes / bandwidth:.0%}); compiled in {compile_seconds:.0f} s; "
                f"{c_same}/{len(result.tokens[0])} greedy tokens as eager"
            )
        if dtype == torch.bfloat16:
            for bits in ("int8", "int4"):
                q = build_model(args.model).eval()
                q.load_state_dict(base.state_dict())
                q_engine = Engine(q.to(dtype), max_batch=1, max_seq_len=slots, quantize=bits)
                with torch.inference_mode():
                    generate(q, [prompt[0].tolist()], GenerationConfig(max_new_tokens=4), engine=q_engine)
                    q_result = generate(q, [prompt[0].tolist()], cfg, engine=q_engine)
                q_same = sum(a == b for a, b in zip(q_result.tokens[0], result.tokens[0]))
                print(
                    f"  scratchllm {bits} weights (bf16 activations) {q_result.decode_tokens_per_s:7.1f} tokens/s"
                    f"   ratio vs transformers bf16 {q_result.decode_tokens_per_s / hf_tps:.2f}x, vs our bf16 "
                    f"{q_result.decode_tokens_per_s / ours_tps:.2f}x; "
                    f"{q_same}/{len(result.tokens[0])} greedy tokens as bf16"
                )


if __name__ == "__main__":
    main()
