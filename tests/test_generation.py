"""Generation: fast path == the book's loop == transformers' generate, batching, sampling, streaming."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.generate import (
    GenerationConfig,
    StreamDecoder,
    generate,
    generate_text_simple,
    stream_text,
)
from scratchllm.generation.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    filter_logits,
    filter_rows,
    sample_next,
    sample_rows,
)
from scratchllm.models import build_model
from tests.hf_families import FAMILIES, pair


@pytest.fixture(scope="module", params=["gpt-tiny", "llama-tiny"])
def tiny(request):
    torch.manual_seed(0)
    return build_model(request.param).eval()


def test_greedy_matches_book_loop(tiny):
    prompt = torch.randint(0, 512, (1, 7), generator=torch.Generator().manual_seed(3))
    expected = generate_text_simple(tiny, prompt, 40, tiny.config.context_length)[0, 7:].tolist()
    result = generate(tiny, [prompt[0].tolist()], GenerationConfig(max_new_tokens=40))
    assert result.tokens[0] == expected
    assert result.stop_reasons == ["length"]


def test_batched_rows_equal_alone(tiny):
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (3, 11, 6)]
    cfg = GenerationConfig(max_new_tokens=12)
    batched = generate(tiny, prompts, cfg).tokens
    assert batched == [generate(tiny, [p], cfg).tokens[0] for p in prompts]


def test_long_prompt_chunked_prefill(tiny):
    prompt = torch.randint(0, 512, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    one = generate(tiny, [prompt], GenerationConfig(max_new_tokens=8, prefill_chunk=1024)).tokens
    chunked = generate(tiny, [prompt], GenerationConfig(max_new_tokens=8, prefill_chunk=16)).tokens
    assert one == chunked


def test_context_overflow(tiny):
    ctx = tiny.config.context_length
    prompt = list(range(1, ctx - 5))
    result = generate(tiny, [prompt], GenerationConfig(max_new_tokens=20))
    # The last new token is predicted from a full context window: ctx - len(prompt) + 1 tokens fit.
    assert result.stop_reasons == ["context"] and len(result.tokens[0]) == ctx - len(prompt) + 1
    slid = generate(tiny, [prompt], GenerationConfig(max_new_tokens=40, overflow="slide"))
    assert len(slid.tokens[0]) == 40 and slid.stop_reasons == ["length"]
    with pytest.raises(ScratchLLMError, match="context length"):
        generate(tiny, [list(range(ctx + 3))], GenerationConfig(max_new_tokens=2))
    assert (
        len(generate(tiny, [list(range(ctx + 3))], GenerationConfig(max_new_tokens=2, overflow="slide")).tokens[0]) == 2
    )


def test_stop_ids_and_seeds(tiny):
    prompt = [[1, 2, 3]]
    greedy = generate(tiny, prompt, GenerationConfig(max_new_tokens=10)).tokens[0]
    stop = greedy[4]
    stopped = generate(tiny, prompt, GenerationConfig(max_new_tokens=10, stop_ids=(stop,)))
    assert stopped.tokens[0] == greedy[: greedy.index(stop) + 1] and stopped.stop_reasons == ["stop_id"]
    sampled = [generate(tiny, prompt, GenerationConfig(max_new_tokens=15, temperature=1.5, seed=s)).tokens[0]
               for s in (1, 1, 2)]  # fmt: skip
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    for narrow in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        cfg = GenerationConfig(max_new_tokens=10, temperature=0.8, seed=0, **narrow)
        assert generate(tiny, prompt, cfg).tokens[0] == greedy


def test_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    kept = lambda cfg: torch.isfinite(filter_logits(logits, cfg))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(temperature=1, top_k=2)) == [True, True, False, False, False]
    p = logits.softmax(-1)[0]  # 0.636, 0.234, 0.086, ...
    assert kept(SamplingConfig(temperature=1, top_p=0.8)) == [True, True, False, False, False]
    assert kept(SamplingConfig(temperature=1, top_p=float(p[0]) - 1e-3)) == [True, False, False, False, False]
    assert kept(SamplingConfig(temperature=1, min_p=0.3)) == [True, True, False, False, False]
    assert torch.allclose(filter_logits(logits, SamplingConfig(temperature=2)), logits / 2)
    penalised = apply_repetition_penalty(logits, torch.tensor([[0, 4]]), 2.0)
    assert penalised.tolist() == [[1.5, 2.0, 1.0, 0.0, -2.0]]
    assert sample_next(logits, SamplingConfig()).item() == 0


ROW_SETTINGS = [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.6), dict(temperature=1.0, min_p=0.2),
                dict(temperature=0.9, top_k=10, top_p=0.8), dict(temperature=1.0), dict(temperature=0.0),
                dict(temperature=1.1, top_k=20, top_p=0.9, min_p=0.05)]  # fmt: skip


def test_per_row_filters_match_transformers_warpers():
    """One batched pass with a different setting per row keeps exactly the tokens transformers' own logits
    warpers keep for each row alone (temperature, then top-k, top-p, min-p)."""
    from transformers.generation import logits_process as lp

    torch.manual_seed(0)
    logits = torch.randn(len(ROW_SETTINGS), 64) * 3
    cfgs = [SamplingConfig(**kw) for kw in ROW_SETTINGS]
    ours = filter_rows(logits, cfgs)
    for i, kw in enumerate(ROW_SETTINGS):
        warpers = [lp.TemperatureLogitsWarper(kw["temperature"] or 1.0)]
        if "top_k" in kw:
            warpers.append(lp.TopKLogitsWarper(kw["top_k"]))
        if "top_p" in kw:
            warpers.append(lp.TopPLogitsWarper(kw["top_p"]))
        if "min_p" in kw:
            warpers.append(lp.MinPLogitsWarper(kw["min_p"]))
        theirs = logits[i : i + 1]
        for w in warpers:
            theirs = w(torch.zeros(1, 1, dtype=torch.long), theirs)
        assert torch.equal(torch.isfinite(ours[i]), torch.isfinite(theirs[0])), kw
        kept = torch.isfinite(theirs[0])
        assert torch.allclose(ours[i][kept], theirs[0][kept])


def test_batched_draws_follow_each_rows_distribution():
    """Inverse-CDF draws: evenly spaced uniforms pick each token in proportion to its filtered probability."""
    torch.manual_seed(1)
    logits = torch.randn(len(ROW_SETTINGS), 32) * 2
    cfgs = [SamplingConfig(**kw) for kw in ROW_SETTINGS]
    draws = 20_000
    u = (torch.arange(draws) + 0.5) / draws
    picks = torch.stack([sample_rows(logits, cfgs, u[j].expand(len(cfgs))) for j in range(0, draws, 1)], dim=1)
    for i, c in enumerate(cfgs):
        if c.greedy:
            assert (picks[i] == logits[i].argmax()).all()
            continue
        expected = filter_rows(logits[i : i + 1], [c]).softmax(-1)[0]
        observed = torch.bincount(picks[i], minlength=32).float() / draws
        assert (observed - expected).abs().max() < 2 / draws + 1e-6
        assert observed[expected == 0].sum() == 0  # a removed token is never drawn


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
     (dict(top_k=0), "top_k"), (dict(overflow="wrap"), "overflow")],
)  # fmt: skip
def test_bad_settings(kwargs, match):
    with pytest.raises(ScratchLLMError, match=match):
        GenerationConfig(**kwargs)


def test_empty_prompt(tiny):
    with pytest.raises(ScratchLLMError, match="empty"):
        generate(tiny, [[]])


def test_stream_decoder_never_splits_characters(gpt2_tokenizer):
    text = "naïve 日本語のテキスト 🤖🎉 done"
    ids = gpt2_tokenizer.encode(text)
    assert any("\ufffd" in gpt2_tokenizer.decode([i]) for i in ids)  # some tokens are partial characters
    decoder = StreamDecoder(gpt2_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    decoder = StreamDecoder(gpt2_tokenizer, stop_strings=("のテ",))
    out = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert out == "naïve 日本語" and decoder.stopped


def test_stream_decoder_holds_back_only_what_could_start_a_stop_string(gpt2_tokenizer):
    """Under alpaca's long stop strings, text that cannot begin one streams with its token; only a pending
    end that matches a stop string's beginning waits, and is released once it cannot be one."""
    stops = ("\n\n### Instruction:", "\n### Response:")
    decoder = StreamDecoder(gpt2_tokenizer, stop_strings=stops)
    assert decoder.push(gpt2_tokenizer.encode("Blue")[0]) == "Blue"  # nothing to wait for
    held = [decoder.push(i) for i in gpt2_tokenizer.encode(" sky\n\n###")]
    assert "".join(held) == " sky"  # "\n\n###" could still become "\n\n### Instruction:"
    assert decoder.push(gpt2_tokenizer.encode(" Note")[0]) == "\n\n### Note"  # it could not: released
    rest = [decoder.push(i) for i in gpt2_tokenizer.encode("\n### Response: x")]
    assert "".join(rest) == "" and decoder.stopped


def test_stream_text_equals_generate(gpt2_tokenizer):
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=50257).eval()
    prompt = gpt2_tokenizer.encode("Hello")
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=7)
    streamed = "".join(stream_text(model, gpt2_tokenizer, prompt, cfg))
    assert streamed == generate(model, [prompt], cfg, tokenizer=gpt2_tokenizer).texts[0]



@pytest.mark.parametrize("arch", FAMILIES)
def test_greedy_matches_transformers_generate(arch, device):
    hf, ours = pair(arch)
    ours, hf = ours.to(device), hf.to(device)
    prompts = [[5, 17, 42, 7, 99], [11, 3]]
    ours_out = generate(ours, prompts, GenerationConfig(max_new_tokens=25)).tokens
    for prompt, got in zip(prompts, ours_out):
        ids = torch.tensor([prompt], device=device)
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=25, do_sample=False,
                               min_new_tokens=25, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
        assert got == expected


def test_int8_weight_only_quantisation():
    from scratchllm.generation.quantize import Int8Linear, quantize_int8

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    q = Int8Linear(linear)
    x = torch.randn(3, 5, 96)
    rel = (q(x) - linear(x)).norm() / linear(x).norm()
    assert q.weight_int8.dtype == torch.int8 and rel < 0.01
    got, expected = quantised_logits(quantize_int8, Int8Linear)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.999
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


def quantised_logits(quantize, kind) -> tuple[torch.Tensor, torch.Tensor]:
    """A tied gpt-tiny's logits after and before `quantize`, which must turn its head and blocks into `kind`
    (and still generate)."""
    model = build_model("gpt-tiny", tie_embeddings=True).eval()
    idx = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        expected = model(idx)
        quantize(model)
        got = model(idx)
    assert isinstance(model.out_head, kind) and isinstance(model.blocks[0].attn.qkv, kind)
    assert isinstance(model.blocks[0].ff.fc2, kind)
    assert len(generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=5)).tokens[0]) == 5
    return got, expected


def test_int4_weight_only_quantisation():
    """Groups of 32 inputs, 16 levels between each group's min and max: the packed kernel gives the product with
    those rounded weights (written out here), for a head whose rows are no multiple of 16 too, with a bias."""
    from scratchllm.generation.quantize import Int4Linear, quantize_int4

    torch.manual_seed(0)
    for out_features in (48, 50):
        linear = torch.nn.Linear(96, out_features)
        groups = linear.weight.detach().reshape(out_features, 3, 32)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        step = (high - low) / 15
        rounded = (low + step * torch.round((groups - low) / step)).reshape(out_features, 96)
        q = Int4Linear(linear)
        x = torch.randn(3, 5, 96)
        with torch.no_grad():
            want = torch.nn.functional.linear(x, rounded, linear.bias)
            got = q(x)
            assert got.dtype == x.dtype and got.shape == want.shape
            assert (got - want).norm() / want.norm() < 0.01  # bf16 activations and scales
            assert 0.02 < (got - linear(x)).norm() / linear(x).norm() < 0.1  # 4 bits do cost precision
    got, expected = quantised_logits(quantize_int4, Int4Linear)
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.99


@pytest.mark.parametrize(
    "name, one_row, few_rows",
    [("gpt-tiny", "onednn", "mkl"), ("llama-tiny", "mv", "mkl"), ("qwen3-moe-tiny", "mv", "linear"),
     ("gemma3-tiny", "onednn", "mkl")],
)  # fmt: skip
def test_compiled_decode_equals_eager(name, one_row, few_rows, monkeypatch):
    """The compiled step gives the eager model's greedy tokens for one row and batches of 3 and 4 (MKL's
    few-rows product), with each product on the kernel the engine chose, called as an opaque op; batch
    sizes, prompt lengths and slots after the first compiles compile nothing new."""
    from torch._dynamo.utils import counters

    from scratchllm.generation import packed
    from scratchllm.generation.engine import Engine

    # the race would keep these tiny matrices on F.linear: impose the kernels under test
    monkeypatch.setattr(packed, "_ONE_ROW", {})
    monkeypatch.setattr(packed, "_FEW_ROWS", {})
    monkeypatch.setattr(packed, "fastest_kernel", lambda weights, bias=False: one_row)
    monkeypatch.setattr(packed, "fastest_few_rows", lambda weights, bias=False: few_rows)
    torch.manual_seed(0)
    eager = build_model(name, tie_embeddings=True).eval()  # experts gathered, windows masked in the compiled step
    model = build_model(name, tie_embeddings=True).eval()
    model.load_state_dict(eager.state_dict())
    engine = Engine(model, max_batch=4, max_seq_len=64, compile=True)
    assert isinstance(model.blocks[0].attn.qkv, packed.DecodeLinear)
    assert (model.out_head.one_row, model.out_head.few_rows) == (one_row, few_rows)
    assert model.out_head.weight is model.tok_emb.weight
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (3, 11, 6, 8)]

    def both(prompts, n):
        cfg = GenerationConfig(max_new_tokens=n)
        assert generate(model, prompts, cfg, engine=engine).tokens == generate(eager, prompts, cfg).tokens

    both(prompts, 12)  # rows of different lengths together (per-row slots, key mask)
    both(prompts[:1], 5)  # one row alone (a plain slot, no mask)
    graphs = counters["stats"]["unique_graphs"]
    both(prompts[1:], 9)  # other batch sizes, prompt lengths and slots: no new compile
    for p, n in zip(prompts, (30, 17, 4)):
        both([p], n)
    assert counters["stats"]["unique_graphs"] == graphs


def _sharp_pair(arch: str):
    """A transformers model with large random weights and ours from the same weights.

    The default init (std 0.02) gives near-uniform attention on which positions barely matter; std 0.25
    makes attention peaked, so an off-by-one position or a leaked padding slot changes the logits.
    """
    kw = {"n_positions": 96} if arch == "gpt2" else {"max_position_embeddings": 96}
    return pair(arch, initializer_range=0.25, **kw)


@pytest.mark.parametrize("arch", FAMILIES)
def test_batched_cached_decoding_logits_match_transformers(arch, device):
    """Every decode step of rows of different lengths decoding together (each prefilled alone, in chunks)
    gives, for each row, transformers' logits for that row's sequence alone, without a cache."""
    hf, ours = _sharp_pair(arch)
    hf, ours = hf.to(device), ours.to(device)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 13, 8)]
    captured: list[torch.Tensor] = []

    def keep_decode_steps(module, args, output):
        if output.shape[0] == 3:  # the steps decoding all rows (prefills run one row at a time)
            captured.append(output[:, -1].clone())

    hook = ours.register_forward_hook(keep_decode_steps)
    try:
        result = generate(ours, prompts, GenerationConfig(max_new_tokens=10, prefill_chunk=5))
    finally:
        hook.remove()
    assert len(captured) == 9  # the first new token comes from each row's prefill
    for i, (prompt, new) in enumerate(zip(prompts, result.tokens)):
        with torch.no_grad():
            expected = hf(torch.tensor([prompt + new], device=device)).logits[0, len(prompt) : -1]
        got = torch.stack([step[i] for step in captured])
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 1e-5 * scale, (i, (got - expected).abs().max().item(), scale)
        assert new[1:] == expected.argmax(-1).tolist()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_repetition_penalty_matches_transformers(arch, device):
    hf, ours = _sharp_pair(arch)
    hf, ours = hf.to(device), ours.to(device)
    prompt = [5, 17, 42, 7, 99, 5, 5]
    plain = generate(ours, [prompt], GenerationConfig(max_new_tokens=30)).tokens[0]
    penalised = generate(ours, [prompt], GenerationConfig(max_new_tokens=30, repetition_penalty=1.8)).tokens[0]
    ids = torch.tensor([prompt], device=device)
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, min_new_tokens=30,
                           do_sample=False, repetition_penalty=1.8, pad_token_id=0)  # fmt: skip
    expected = expected[0, len(prompt) :].tolist()
    assert penalised == expected
    assert penalised != plain  # the penalty changed the greedy path, so the comparison says something
    assert len(set(penalised)) > len(set(plain))


def test_generate_honours_stop_strings(gpt2_tokenizer):
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=50257).eval()
    prompt = gpt2_tokenizer.encode("Hello")
    full = generate(model, [prompt], GenerationConfig(max_new_tokens=40), tokenizer=gpt2_tokenizer)
    text = full.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.index(stop)
    stopped = generate(model, [prompt], GenerationConfig(max_new_tokens=40, stop_strings=(stop,)), gpt2_tokenizer)
    assert stopped.stop_reasons == ["stop_string"]
    assert stopped.texts[0] == text[:cut]  # the stop text itself is not returned
    assert len(stopped.tokens[0]) < len(full.tokens[0])  # and generation stopped there, not at max_new_tokens
    assert full.tokens[0][: len(stopped.tokens[0])] == stopped.tokens[0]
