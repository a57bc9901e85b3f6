"""Sliding-window attention (Gemma 3, Olmo 3): local layers' KV caches hold only their window, and generation
far past the window (long prompts prefilled in chunks, rows of different lengths decoding together, rows
finishing and moving in the pool) gives transformers' tokens."""

from __future__ import annotations

import pytest
import torch

from scratchllm.generation.engine import Engine, GenerationConfig
from scratchllm.models import get_config
from scratchllm.models.attention import KVCache, band_mask
from tests.hf_families import pair


def test_local_layer_caches_hold_only_their_window():
    """Gemma 3 1B at 8k context: 22 of its 26 layers keep 512 slots, so the cache is 21% of a full one."""
    config = get_config("gemma-3-1b")
    cache = KVCache.allocate(config, rows=2, max_len=8192, dtype=torch.bfloat16, device="meta")
    assert [k.shape[2] for k in cache.k] == [8192 if (i + 1) % 6 == 0 else 512 for i in range(26)]
    assert [v.shape for v in cache.v] == [k.shape for k in cache.k]
    full = 26 * 2 * config.n_kv_heads * 8192 * config.head_dim
    assert sum(k.numel() for k in cache.k) / full == pytest.approx((4 * 8192 + 22 * 512) / (26 * 8192))
    assert sum(k.numel() for k in cache.k) / full < 0.3
    short = KVCache.allocate(config, rows=1, max_len=100, dtype=torch.float32, device="meta")
    assert {k.shape[2] for k in short.k} == {100}  # a window longer than the cache changes nothing


def test_band_mask_is_the_window():
    assert band_mask(4, 2, "cpu").int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


@pytest.mark.parametrize("arch", ["gemma3", "olmo3"])
def test_generation_far_past_the_window_equals_transformers(arch):
    """Windows of 8; prompts of 3, 21 and 30 tokens prefilled in chunks of 5 (so chunks straddle ring wraps),
    40 to 12 new tokens per row, decoded together in one pool where finished rows leave and others move."""
    hf, ours = pair(arch, initializer_range=0.25)  # peaked attention: a wrong key changes the tokens
    engine = Engine(ours, max_batch=3, max_seq_len=80, prepare=False)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 21, 30)]
    lengths = (40, 12, 25)
    requests = [engine.submit(p, GenerationConfig(max_new_tokens=n, prefill_chunk=5)) for p, n in zip(prompts, lengths)]
    engine.run(requests)
    assert max(k.shape[2] for k, local in zip(engine.cache.k, engine.cache.local) if local) == 8
    for prompt, n, request in zip(prompts, lengths, requests):
        ids = torch.tensor([prompt])
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
        assert request.tokens == expected


@pytest.mark.parametrize("arch", ["gemma3", "olmo3"])
def test_chunked_prefill_logits_equal_one_pass(arch):
    """A 50-token prompt prefilled in chunks of 3, 8 and 13 (below, at and above the window) ends with the logits
    of the whole sequence at once, which are transformers' logits."""
    hf, ours = pair(arch, initializer_range=0.25)
    idx = torch.randint(0, 300, (1, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits[:, -1]
        torch.testing.assert_close(ours(idx)[:, -1], expected, atol=1e-4, rtol=1e-4)
        for chunk in (3, 8, 13):
            cache = KVCache.allocate(ours.config, 1, 64, torch.float32)
            for s in range(0, 50, chunk):
                last = ours(idx[:, s : s + chunk], cache=cache, start=s, last_only=True)
            torch.testing.assert_close(last[:, -1], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_prompts_arriving_together_are_prefilled_together_in_chunks_between_decode_steps(arch):
    """A row is decoding when three prompts arrive (37, 37 and 15 tokens; windows of 8 for Gemma 3). With a
    budget of 8 prompt tokens per step they are prefilled together, a chunk per step (2 tokens per row while
    three wait), and the decoding row gets its next token at every one of those steps instead of stalling;
    every row's tokens are greedy under transformers' forward of that prompt and those tokens alone (not its
    `generate`: forced to `min_new_tokens` it never picks Llama's end-of-text id 2, which greedy here does once).
    """
    hf, ours = pair(arch, initializer_range=0.25)
    engine = Engine(ours, max_batch=4, max_seq_len=96, prepare=False, prefill_budget=8)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (6, 37, 37, 15)]
    lengths = (40, 10, 12, 20)
    first = engine.submit(prompts[0], GenerationConfig(max_new_tokens=lengths[0]))
    engine.step()
    rest = engine.submit_all([(p, GenerationConfig(max_new_tokens=n), None) for p, n in zip(prompts[1:], lengths[1:])])
    stalled = 0
    while any(r.first_token_at is None for r in rest):
        before = len(first.tokens)
        engine.step()
        stalled += len(first.tokens) == before
    assert stalled == 0 and engine.stats.largest_prefill_batch == 3
    assert engine.stats.prefill_forwards >= 10  # chunks within the budget (8 + 6 here), not whole prompts
    engine.run()
    for prompt, n, request in zip(prompts, lengths, [first, *rest]):
        assert len(request.tokens) == n
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + request.tokens[:-1]])).logits[0, len(prompt) - 1 :]
        assert logits.argmax(-1).tolist() == request.tokens
