"""The generation engine: per-request caches, continuous batching, per-request sampling, queue and cancel."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.engine import Engine, EngineBusy, GenerationConfig
from scratchllm.generation.generate import generate
from scratchllm.models import build_model


def sharp_model(preset: str = "gpt-tiny", **overrides):
    """A tiny model with large weights: peaked attention and clear logit gaps, so a wrong position, a leaked
    slot or another row's keys change the greedy tokens, and kernel rounding never flips a near-tie."""
    torch.manual_seed(0)
    model = build_model(preset, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
    return model


@pytest.fixture(scope="module", params=["gpt-tiny", "llama-tiny"])
def model(request):
    return sharp_model(request.param)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 500, (int(k),), generator=g).tolist() for k in torch.randint(2, 20, (n,), generator=g)]


def alone(model, prompt, cfg):
    return generate(model, [prompt], cfg).tokens[0]


def test_interleaved_requests_do_not_corrupt_each_other(model):
    """Two generations stepped alternately on one model (the old module-held cache diverged at step 6)."""
    a, b = prompts(2, seed=1)
    cfg = GenerationConfig(max_new_tokens=20)
    engine_a, engine_b = Engine(model, max_batch=1, prepare=False), Engine(model, max_batch=1, prepare=False)
    ra, rb = engine_a.submit(a, cfg), engine_b.submit(b, cfg)
    while not (ra.done and rb.done):
        engine_a.step()
        engine_b.step()
    assert ra.tokens == alone(model, a, cfg) and rb.tokens == alone(model, b, cfg)


def on(model, device: str):
    import copy

    return model if device == "cpu" else copy.deepcopy(model).to(device)


def test_requests_join_and_leave_a_running_batch(model, device):
    """Requests arriving while others decode join between steps; each result equals generating it alone."""
    model = on(model, device)
    engine = Engine(model, max_batch=4, prepare=False)
    ps = prompts(7, seed=2)
    lengths = [5, 17, 9, 30, 3, 12, 21]
    first = [engine.submit(p, GenerationConfig(max_new_tokens=n)) for p, n in zip(ps[:3], lengths[:3])]
    for _ in range(4):
        engine.step()
    later = [engine.submit(p, GenerationConfig(max_new_tokens=n)) for p, n in zip(ps[3:], lengths[3:])]
    sizes = []
    while not engine.idle:
        engine.step()
        sizes.append(len(engine.active))
    assert max(sizes) == 4 and engine.stats.largest_batch == 4  # bounded by max_batch, and actually batched
    for r, p, n in zip(first + later, ps, lengths):
        assert r.finish_reason == "length" and r.tokens == alone(model, p, GenerationConfig(max_new_tokens=n))


def test_seeded_sampling_is_independent_of_the_batch(model, device):
    model = on(model, device)
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, seed=11)
    p = prompts(1, seed=3)[0]
    engine = Engine(model, max_batch=4, prepare=False)
    together = [engine.submit(q, GenerationConfig(max_new_tokens=15, temperature=1.3, seed=i)) for i, q in
                enumerate(prompts(3, seed=4))]  # fmt: skip
    mine = engine.submit(p, cfg)
    engine.run(together + [mine])
    assert mine.tokens == alone(model, p, cfg)
    assert mine.tokens != alone(model, p, GenerationConfig(max_new_tokens=15, temperature=1.0, seed=12))


def test_logprobs_are_the_models(model, device):
    model = on(model, device)
    p = prompts(1, seed=5)[0]
    engine = Engine(model, max_batch=2, prepare=False)
    r = engine.submit(p, GenerationConfig(max_new_tokens=4, logprobs=3))
    engine.run()
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([p + r.tokens], device=device)).float(), dim=-1)[0, len(p) - 1 : -1]
    for i, out in enumerate(r.logprobs):
        assert out.token == r.tokens[i] == int(full[i].argmax())
        assert out.logprob == pytest.approx(float(full[i, out.token]), abs=1e-4)
        assert [t for t, _ in out.top_logprobs] == full[i].topk(3).indices.tolist()


def test_queue_bound_cancel_and_bad_prompts(model):
    engine = Engine(model, max_batch=1, max_queue=2, prepare=False)
    cfg = GenerationConfig(max_new_tokens=50)
    first, second = engine.submit([1, 2, 3], cfg), engine.submit([4, 5], cfg)
    with pytest.raises(EngineBusy, match="queue is full"):
        engine.submit([6], cfg)
    engine.step()
    engine.cancel(first)
    engine.step()
    assert first.finish_reason == "cancelled" and len(first.tokens) < 50
    engine.run([second])
    assert second.finish_reason == "length" and len(second.tokens) == 50
    with pytest.raises(ScratchLLMError, match="empty"):
        engine.submit([], cfg)
    with pytest.raises(ScratchLLMError, match="token ids"):
        engine.submit([model.config.vocab_size], cfg)


def test_a_full_cache_row_stops_or_slides():
    model = sharp_model(context_length=64)
    engine = Engine(model, max_batch=2, max_seq_len=24, prepare=False)
    stop = engine.submit(list(range(1, 20)), GenerationConfig(max_new_tokens=40))
    slide = engine.submit(list(range(1, 20)), GenerationConfig(max_new_tokens=40, overflow="slide"))
    engine.run()
    assert stop.finish_reason == "context" and len(stop.tokens) == 24 - 19 + 1
    assert slide.finish_reason == "length" and len(slide.tokens) == 40
    with pytest.raises(ScratchLLMError, match="max sequence length is 24"):
        engine.submit(list(range(30)), GenerationConfig())


def test_engine_prepares_the_model_once():
    from scratchllm.generation.quantize import Int8Linear

    model = sharp_model()
    reference = sharp_model()
    engine = Engine(model, max_batch=2, quantize="int8")
    assert isinstance(model.blocks[0].attn.qkv, Int8Linear) and not model.training
    r = engine.submit([1, 2, 3], GenerationConfig(max_new_tokens=8))
    engine.run()
    agree = sum(a == b for a, b in zip(r.tokens, alone(reference, [1, 2, 3], GenerationConfig(max_new_tokens=8))))
    assert agree >= 6  # int8 rounding may flip a late token, rarely more


def test_fixed_shape_decode_equals_the_default(model):
    """The fixed-shape step a CUDA graph replays (every pool row, every cache slot, masked) gives the tokens of
    the default step, with requests joining and leaving, sampled and greedy."""
    ps = prompts(6, seed=9)
    cfgs = [GenerationConfig(max_new_tokens=n, temperature=t, seed=i)
            for i, (n, t) in enumerate(zip([5, 17, 9, 30, 3, 12], [0, 1.0, 0, 0.7, 0, 1.2]))]  # fmt: skip
    results = []
    for fixed in (False, True):
        engine = Engine(model, max_batch=3, max_seq_len=64, prepare=False, fixed_shapes=fixed)
        requests = [engine.submit(p, c) for p, c in zip(ps, cfgs)]
        engine.run(requests)
        results.append([r.tokens for r in requests])
    assert results[0] == results[1]


@pytest.mark.parametrize("kernels", [("mv", "mkl"), ("onednn", "linear"), ("linear", "mkl"), ("linear", "linear")])
def test_each_decode_kernel_keeps_fp32_greedy_tokens(kernels, monkeypatch):
    """Whichever kernels the engine's measurement picks for one row and for a few, fp32 greedy decoding (one
    row, then 4 batched rows) gives the unprepared model's tokens; matrices here are 1-4 MB, so rewritten."""
    from scratchllm.generation import packed

    one_row, few_rows = kernels
    monkeypatch.setattr(packed, "_ONE_ROW", {})
    monkeypatch.setattr(packed, "_FEW_ROWS", {})
    monkeypatch.setattr(packed, "fastest_kernel", lambda weights, bias=False: one_row)
    monkeypatch.setattr(packed, "fastest_few_rows", lambda weights, bias=False: few_rows)
    model = sharp_model(emb_dim=512, n_heads=8, n_layers=2)
    reference = sharp_model(emb_dim=512, n_heads=8, n_layers=2)
    engine = Engine(model, max_batch=4)
    layer = model.blocks[0].ff.fc1
    if kernels == ("linear", "linear"):
        assert type(layer) is torch.nn.Linear
    else:
        assert (layer.one_row, layer.few_rows) == kernels
    cfg = GenerationConfig(max_new_tokens=12)
    batch = prompts(4, seed=3)
    ra = engine.submit(batch[0], cfg)
    engine.run()
    assert ra.tokens == alone(reference, batch[0], cfg)
    requests = [engine.submit(p, cfg) for p in batch]
    engine.run()
    assert [r.tokens for r in requests] == [alone(reference, p, cfg) for p in batch]


def test_batched_decode_packing_stays_within_the_memory_available(monkeypatch, capsys):
    """MKL's packed copies (up to 2.7x the weights) are made only while they take under half the memory
    available: with too little the layers keep F.linear for a few rows and stderr says why."""
    from scratchllm import hardware
    from scratchllm.generation import packed

    monkeypatch.setattr(packed, "_ONE_ROW", {})
    monkeypatch.setattr(packed, "_FEW_ROWS", {})
    monkeypatch.setattr(packed, "fastest_kernel", lambda weights, bias=False: "linear")
    monkeypatch.setattr(packed, "fastest_few_rows", lambda weights, bias=False: "mkl")
    weights = sum(m.weight.numel() * 4 for m in sharp_model(emb_dim=512, n_heads=8, n_layers=2).modules()
                  if isinstance(m, torch.nn.Linear) and m.weight.numel() * 4 >= 1 << 20)  # fmt: skip
    monkeypatch.setattr(hardware, "available_memory", lambda: int(2 * 2.7 * weights) + (1 << 20))
    roomy = sharp_model(emb_dim=512, n_heads=8, n_layers=2)
    Engine(roomy, max_batch=8)
    assert roomy.blocks[0].ff.fc1.few_rows == "mkl" and capsys.readouterr().err == ""
    monkeypatch.setattr(hardware, "available_memory", lambda: int(2 * 2.7 * weights) - (1 << 20))
    tight = sharp_model(emb_dim=512, n_heads=8, n_layers=2)
    Engine(tight, max_batch=8)
    assert type(tight.blocks[0].ff.fc1) is torch.nn.Linear
    assert "batched decoding keeps F.linear" in capsys.readouterr().err


def test_one_prompt_asked_several_times_is_prefilled_once(model):
    """`n > 1` choices (or clients sending one prompt together): the later ones fork the first one's row, and
    every request still gets exactly the tokens (and prompt scores) of a separate cold request, greedy or
    seeded."""
    prompt = prompts(1, seed=5)[0]
    cfgs = [GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, temperature=1.0, seed=1),
            GenerationConfig(max_new_tokens=10, temperature=0.8, top_k=20, seed=2),
            GenerationConfig(max_new_tokens=1, temperature=1.0, seed=3)]  # fmt: skip
    engine = Engine(model, max_batch=4, prepare=False)
    requests = [engine.submit(prompt, cfg) for cfg in cfgs]
    engine.run()
    assert engine.stats.forked_prefills == 3
    for r, cfg in zip(requests, cfgs):
        assert r.tokens == alone(model, prompt, cfg)
    scoring = GenerationConfig(max_new_tokens=3, prompt_logprobs=2)
    a, b = engine.submit(prompt, scoring), engine.submit(prompt, scoring)
    engine.run()
    assert engine.stats.forked_prefills == 4 and a.prompt_logprobs == b.prompt_logprobs
    cold = Engine(model, max_batch=1, prepare=False)
    c = cold.submit(prompt, scoring)
    cold.run()
    assert [(o.token, o.logprob) for o in b.prompt_logprobs] == [(o.token, o.logprob) for o in c.prompt_logprobs]
    assert b.tokens == c.tokens


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "gemma3-tiny"])
def test_a_shared_prompt_start_is_reused_with_the_tokens_of_cold_requests(preset):
    """A 30-token system prompt shared by requests arriving one after another: the later ones copy its keys and
    values from the prefix cache and prefill only their own part, and get exactly the tokens a cold engine
    without the cache gives (greedy and seeded). Sliding-window models (Gemma 3) keep no prefix."""
    g = torch.Generator().manual_seed(11)
    system = torch.randint(0, 500, (30,), generator=g).tolist()
    asks = [system + torch.randint(0, 500, (k,), generator=g).tolist() for k in (5, 9, 1)]
    cfgs = [GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=8, temperature=1.0, seed=4),
            GenerationConfig(max_new_tokens=8)]  # fmt: skip
    model = sharp_model(preset)
    warm, cold = Engine(model, max_batch=2, prepare=False), Engine(model, max_batch=2, prepare=False,
                                                                   prefix_cache=False)  # fmt: skip
    for prompt, cfg in zip(asks, cfgs):
        got, want = warm.submit(prompt, cfg), cold.submit(prompt, cfg)
        warm.run()
        cold.run()
        assert got.tokens == want.tokens
        with torch.inference_mode():  # free rows hold another request's keys: only the copy may serve the next
            for t in warm.cache.k + warm.cache.v:
                t[: warm.max_batch].normal_()
    sliding = preset == "gemma3-tiny"
    assert warm.stats.prefix_hits == (0 if sliding else 2) and cold.stats.prefix_hits == 0
    assert warm.stats.prefix_tokens == (0 if sliding else 60)  # 30 + 30 of 30 + 35 + 39 + 31 prompt positions
    assert warm.stats.prompt_tokens == sum(len(a) for a in asks)
