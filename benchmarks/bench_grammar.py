"""Grammar engines for structured output: llguidance (ours) against xgrammar, on the same schemas and tokens.

Both get GPT-2's 50,257-token vocabulary from our tokenizer and the same JSON schemas (20 random small ones,
as tests/test_structured.py draws them, and one larger nested schema). For each schema one token path is
drawn through llguidance's masks (random allowed tokens, seeded) and then replayed in both engines, so each
computes the mask for the same states. Printed: vocabulary set-up, compile time per schema, mask time per
token (median and p95) and the ratio, and the paths the other engine refused (0: both accept the same JSON).

    .venv/bin/python benchmarks/bench_grammar.py        # needs `pip install xgrammar` (make bench installs it)
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def big_schema() -> dict:
    address = {"type": "object", "properties": {"street": {"type": "string", "maxLength": 40},
               "city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
               "required": ["street", "city", "zip"], "additionalProperties": False}  # fmt: skip
    person = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40}, "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
        "maxItems": 5}, "address": address, "active": {"type": "boolean"}},
        "required": ["name", "age", "address"], "additionalProperties": False}  # fmt: skip
    return {"type": "object", "properties": {"people": {"type": "array", "items": person, "maxItems": 3}},
            "required": ["people"], "additionalProperties": False}


def main() -> None:
    import xgrammar as xgr
    from tests.test_structured import random_schema

    from scratchllm.generation.constrained import Grammars
    from scratchllm.hardware import cpu_description
    from scratchllm.tokenizers import load_tokenizer

    print(f"CPU: {cpu_description()}")
    tok = load_tokenizer("gpt2")
    vocab = 50257
    t = time.perf_counter()
    ours = Grammars(tok, vocab, (50256,))
    ours.compile({"type": "object"})  # builds its token table
    ll_setup = time.perf_counter() - t
    t = time.perf_counter()
    encoded = [b"" if i in tok.special_tokens.values() else tok.token_bytes(i) for i in range(vocab)]
    info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=vocab, stop_token_ids=[50256])
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    xg_setup = time.perf_counter() - t
    print(f"vocabulary set-up: llguidance {ll_setup:.2f} s, xgrammar {xg_setup:.2f} s")
    rng = random.Random(0)
    schemas = [random_schema(rng) for _ in range(20)] + [big_schema()]
    compile_ll, compile_xg, mask_ll, mask_raw, mask_xg, refused = [], [], [], [], [], 0
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for k, schema in enumerate(schemas):
        t = time.perf_counter()
        grammar = ours.compile(schema)
        compile_ll.append(time.perf_counter() - t)
        t = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        compile_xg.append(time.perf_counter() - t)
        for path in range(5):
            m, xm = ours.matcher(grammar), xgr.GrammarMatcher(compiled)
            g = torch.Generator().manual_seed(100 * k + path)
            for _ in range(300):
                t = time.perf_counter()
                m._m.unsafe_compute_mask_ptr(m._bitmask.data_ptr(), m._bitmask.numel() * 4)
                mask_raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                allowed = m.allowed()  # the bitmask again, and expanded to the (vocab,) bool mask the engine uses
                mask_ll.append(time.perf_counter() - t)
                t = time.perf_counter()
                xm.fill_next_token_bitmask(bitmask)
                mask_xg.append(time.perf_counter() - t)
                ids = allowed.nonzero()[:, 0]
                token = int(ids[torch.randint(len(ids), (1,), generator=g)])
                if token == 50256 or m.stopped:
                    break
                m.accept(token)
                if not xm.accept_token(token):  # both grammars must agree on what is valid
                    refused += 1
                    break
    p95 = lambda xs: sorted(xs)[int(0.95 * len(xs))]  # noqa: E731
    us = lambda xs: f"median {statistics.median(xs) * 1e6:.0f} us, p95 {p95(xs) * 1e6:.0f} us"  # noqa: E731
    print(f"compile per schema (median): llguidance {statistics.median(compile_ll) * 1e3:.2f} ms, "
          f"xgrammar {statistics.median(compile_xg) * 1e3:.2f} ms")
    print(f"mask per token over {len(mask_ll)} states (paths xgrammar refused part-way: {refused}):")
    print(f"  llguidance bitmask: {us(mask_raw)}; with our expansion to a bool mask: {us(mask_ll)}")
    print(f"  xgrammar bitmask:   {us(mask_xg)}; llguidance / xgrammar "
          f"{statistics.median(mask_raw) / statistics.median(mask_xg):.1f}x")


if __name__ == "__main__":
    main()
