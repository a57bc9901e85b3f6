"""Models: the book's attention progression, production == reference, configs, KV cache, sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.models import Transformer, build_model, get_config, list_presets
from scratchllm.models.attention import CausalSelfAttention, explicit_causal_attention
from scratchllm.models.book_attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    simplified_self_attention,
)
from scratchllm.models.book_gpt import BookGELU, BookGPTModel, BookLayerNorm, copy_into_book_model
from scratchllm.models.config import ModelConfig, load_config
from scratchllm.models.gpt2 import LayerNorm

# The book's running example: "Your journey starts with one step", 3-d embeddings.
INPUTS = torch.tensor(
    [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64], [0.22, 0.58, 0.33], [0.77, 0.25, 0.10],
     [0.05, 0.80, 0.55]]
)  # fmt: skip


def test_simplified_attention_book_figure():
    context = simplified_self_attention(INPUTS)
    assert torch.allclose(context[1], torch.tensor([0.4419, 0.6515, 0.5683]), atol=1e-4)
    weights = torch.softmax(INPUTS @ INPUTS.T, dim=-1)
    assert torch.allclose(weights.sum(-1), torch.ones(6))


def test_self_attention_v1_equals_v2():
    torch.manual_seed(123)
    v2 = SelfAttentionV2(3, 2)
    v1 = SelfAttentionV1(3, 2)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v1, name).copy_(getattr(v2, name).weight.T)
    assert torch.allclose(v1(INPUTS), v2(INPUTS), atol=1e-6)


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    att = CausalAttention(3, 4, context_length=6, dropout=0.0).eval()
    batch = torch.stack([INPUTS, INPUTS])
    changed = batch.clone()
    changed[:, 4:] = torch.rand(2, 2, 3)
    out, out_changed = att(batch), att(changed)
    assert out.shape == (2, 6, 4)
    assert torch.allclose(out[:, :4], out_changed[:, :4]) and not torch.allclose(out[:, 4:], out_changed[:, 4:])


def test_multihead_module_equals_wrapper():
    torch.manual_seed(0)
    heads, d_head = 2, 3
    wrapper = MultiHeadAttentionWrapper(3, d_head, 6, 0.0, heads).eval()
    mha = MultiHeadAttention(3, heads * d_head, 6, 0.0, heads).eval()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(mha, name).weight.copy_(torch.cat([getattr(h, name).weight for h in wrapper.heads]))
        mha.out_proj.weight.copy_(torch.eye(heads * d_head))
        mha.out_proj.bias.zero_()
    x = torch.rand(2, 6, 3)
    assert torch.allclose(mha(x), wrapper(x), atol=1e-6)


def test_production_attention_equals_book_mha():
    torch.manual_seed(0)
    config = ModelConfig(emb_dim=32, n_heads=4, n_layers=1, context_length=16, qkv_bias=True)
    ours = CausalSelfAttention(config).eval()
    book = MultiHeadAttention(32, 32, 16, 0.0, 4, qkv_bias=True).eval()
    with torch.no_grad():
        for name, w, b in zip(("W_query", "W_key", "W_value"), ours.qkv.weight.split(32), ours.qkv.bias.split(32)):
            getattr(book, name).weight.copy_(w)
            getattr(book, name).bias.copy_(b)
        book.out_proj.load_state_dict(ours.proj.state_dict())
    x = torch.randn(3, 16, 32)
    assert torch.allclose(ours(x), book(x), atol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_explicit_attention_equals_sdpa_with_gradients(n_kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 24, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(2, n_kv_heads, 24, 16, generator=g, requires_grad=True) for _ in range(2))
    upstream = torch.randn(2, 4, 24, 16, generator=g)
    results = []
    for attend in (
        explicit_causal_attention,
        lambda *a: F.scaled_dot_product_attention(*a, is_causal=True, enable_gqa=True),
    ):
        out = attend(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), upstream)
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_explicit_attention_in_bf16_is_as_accurate_as_sdpa():
    """Scores and softmax stay float32 inside: the error against float64 is SDPA's, not twice it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, generator=g) for _ in range(3))
    q = q * 2  # scores with a spread like a trained model's, where rounding them would show
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    low = [t.bfloat16() for t in (q, k, v)]
    errors = [
        ((out.double() - exact) ** 2).mean().sqrt().item()
        for out in (explicit_causal_attention(*low), F.scaled_dot_product_attention(*low, is_causal=True))
    ]
    assert errors[0] <= 1.2 * errors[1], errors


def test_bf16_training_attention_path_matches_sdpa(monkeypatch):
    """CPU bf16 training takes the explicit path; its output and gradients equal SDPA's to bf16 precision."""
    from scratchllm.models import attention

    torch.manual_seed(0)
    layer = CausalSelfAttention(ModelConfig(emb_dim=64, n_heads=8, n_kv_heads=2, n_layers=1, context_length=64))
    x = torch.randn(2, 48, 64)
    results = []
    for max_len in (attention.EXPLICIT_ATTENTION_MAX_LEN, 0):  # explicit, then SDPA
        monkeypatch.setattr(attention, "EXPLICIT_ATTENTION_MAX_LEN", max_len)
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().square().mean().backward()
        results.append((out.float(), layer.qkv.weight.grad.clone(), layer.proj.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02 * b.abs().max().item())


def test_layernorm_and_gelu_match_book_formulas():
    x = torch.randn(4, 10, 32) * 3
    book_ln, ours = BookLayerNorm(32), LayerNorm(32)
    assert torch.allclose(book_ln(x), ours(x), atol=1e-5)
    assert torch.allclose(ours(x).mean(-1), torch.zeros(4, 10), atol=1e-5)
    assert torch.allclose(BookGELU()(x), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-5)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_transformer_equals_book_gpt(qkv_bias):
    torch.manual_seed(0)
    config = get_config("gpt-tiny", qkv_bias=qkv_bias, tie_embeddings=False)
    ours = Transformer(config).eval()
    book = copy_into_book_model(ours, BookGPTModel(config)).eval()
    idx = torch.randint(0, config.vocab_size, (2, config.context_length))
    assert torch.allclose(ours(idx), book(idx), atol=1e-4)


def test_book_parameter_counts():
    torch.set_default_device("meta")  # shapes only: no 600 MB of random numbers
    try:
        _check_book_parameter_counts()
    finally:
        torch.set_default_device("cpu")


def _check_book_parameter_counts():
    model = build_model("gpt2-124m-book")
    assert model.num_parameters() == 163_009_536
    tied = build_model("gpt2-124m-book", tie_embeddings=True)
    assert tied.num_parameters() == 124_412_160
    assert tied.num_parameters(count_tied_head=True) == 163_009_536
    assert build_model("gpt2-small").num_parameters() == 124_439_808  # OpenAI's release (qkv biases)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_kv_cache_matches_full_forward(preset):
    from scratchllm.models.attention import KVCache

    torch.manual_seed(0)
    model = build_model(preset).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.config, 2, 32, torch.float32)
        pieces = [model(idx[:, :7], cache, start=0), model(idx[:, 7:12], cache, start=7)]  # prefill, then a chunk
        pieces += [model(idx[:, t : t + 1], cache, start=t) for t in range(12, 20)]  # one token at a time
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    with pytest.raises(ScratchLLMError, match="KV cache is full"):
        model(idx[:, :1], cache, start=32)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_rows_of_different_lengths_decode_together(preset):
    """Two sequences prefilled alone into rows of one cache, then one decode step with per-row slots and a
    key mask, must give each row the logits of its whole sequence run without a cache."""
    from scratchllm.models.attention import KVCache

    torch.manual_seed(0)
    model = build_model(preset).eval()
    seqs = [torch.randint(0, 500, (1, n)) for n in (9, 4)]
    nxt = torch.tensor([[7], [11]])
    with torch.no_grad():
        cache = KVCache.allocate(model.config, 2, 16, torch.float32)
        for t in cache.k + cache.v:  # stale values beyond a row's length (an earlier request's) must not count
            t.fill_(100.0)
        for row, seq in enumerate(seqs):
            model(seq, cache.select(row, row + 1), start=0)
        slots = torch.tensor([9, 4])
        key_mask = torch.arange(10)[None, :] <= slots[:, None]
        got = model(nxt, cache, positions=slots[:, None], key_mask=key_mask)[:, -1]
        for row, seq in enumerate(seqs):
            alone = model(torch.cat([seq, nxt[row : row + 1]], dim=1))[:, -1]
            assert torch.allclose(got[row], alone[0], atol=1e-5)


def test_context_length_is_enforced():
    model = build_model("gpt-tiny")
    with pytest.raises(ScratchLLMError, match="context length"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_presets_and_config_files(tmp_path):
    names = list_presets()
    for name in ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama2-7b", "llama3-8b", "llama3.1-8b",
                 "llama3.2-1b", "llama3.2-3b", "gpt-demo", "llama-demo"]:  # fmt: skip
        assert name in names
    assert get_config("gpt2-xl").emb_dim == 1600 and get_config("gpt2-xl").n_layers == 48
    assert get_config("llama3.2-1b").head_dim == 64 and get_config("llama3-8b").n_kv_heads == 8
    config = get_config("llama-tiny", n_layers=3)
    for suffix in (".yaml", ".json"):
        path = config.save(tmp_path / f"c{suffix}")
        assert load_config(path) == config
        assert get_config(str(path)) == config
    (tmp_path / "bad.yaml").write_text("arch: llama\nemb_dims: 4\n")
    with pytest.raises(ScratchLLMError, match="unknown field 'emb_dims'"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ScratchLLMError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3, emb_dim=64)
    with pytest.raises(ScratchLLMError, match="unknown model"):
        get_config("gpt5")


def test_replace_rederives_widths():
    config = get_config("gpt-demo", emb_dim=192, n_heads=6)
    assert (config.n_kv_heads, config.head_dim, config.hidden_dim) == (6, 32, 768)
    explicit = get_config("llama-demo", n_layers=2)
    assert explicit.hidden_dim == 688 and explicit.n_kv_heads == 2  # given explicitly by the preset: kept


def test_kernel_race_takes_the_median_and_needs_a_clear_win(monkeypatch):
    """The kernel race on a fake clock: one slowed pass (a burst elsewhere on the machine) does not hand the
    race to the kernel it slowed or take it from one that wins every other round, and a kernel must beat
    F.linear by 5% to replace it."""
    from scratchllm.generation import packed

    now = [0.0]
    monkeypatch.setattr(packed.time, "perf_counter", lambda: now[0])

    def kernel(*seconds):
        calls = iter([0.0, *seconds])  # the warm-up call first

        def products():
            now[0] += next(calls)

        return products

    # "mv" is fastest in 4 rounds of 5; "onednn" once looked best (one fast pass) but is slow otherwise
    race = {"linear": kernel(10, 10, 10, 10, 10), "mv": kernel(8, 8, 30, 8, 8), "onednn": kernel(12, 1, 12, 12, 12)}
    assert packed._fastest(race) == "mv"
    assert packed._fastest({"linear": kernel(10, 10, 10, 10, 10), "mv": kernel(9.7, 9.7, 9.7, 9.7, 9.7)}) == "linear"


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_decode_kernels_keep_values(preset):
    """Each decode kernel (matrix-vector or oneDNN-packed for one row, MKL-packed for a few rows), put in
    through the one Linear-rewrite helper, gives F.linear's values for one row, a few rows and a prefill's
    many; the engine's rewrite (`prepare_linears`) gives each layer the kernels its measurement chose, and
    keeps the tied head's storage shared with the embedding."""
    from scratchllm.generation import packed
    from scratchllm.generation.packed import DecodeLinear, fastest_kernel, prepare_linears
    from scratchllm.models.linear import rewrite_linears

    torch.manual_seed(0)
    idx = torch.randint(0, 512, (2, 12))
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in build_model(preset).modules())
    for one_row, few_rows in [(k, f) for k in packed.ONE_ROW_KERNELS for f in ("linear", "mkl")]:
        model = build_model(preset, tie_embeddings=True).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):  # initialised to zero: give them values that count
                    p.normal_(0.0, 0.5)
            expected, one, eight = model(idx), model(idx[:1, :1]), model(idx[:, :4].reshape(8, 1))
            kinds = (one_row, few_rows)
            assert rewrite_linears(model, lambda name, layer, kinds=kinds: DecodeLinear(layer, *kinds)) == n_linear
            assert isinstance(model.blocks[0].attn.qkv, DecodeLinear) and isinstance(model.out_head, DecodeLinear)
            assert torch.allclose(model(idx), expected, atol=1e-5)
            assert torch.allclose(model(idx[:1, :1]), one, atol=1e-5)
            assert torch.allclose(model(idx[:, :4].reshape(8, 1)), eight, atol=1e-5)
    with torch.no_grad():
        assert fastest_kernel([torch.nn.Linear(64, 64).weight]) == "linear"  # under 1 MB: caches serve it
        big = build_model(preset, emb_dim=512, n_heads=4, n_kv_heads=4, hidden_dim=2048, tie_embeddings=True)
        layer = big.eval().blocks[0].ff
        key = packed._key(layer.up if hasattr(layer, "up") else layer.fc1)  # (2048, 512, fp32, bias)
        prepare_linears(big, rows=8)
        layer = big.blocks[0].ff.up if hasattr(big.blocks[0].ff, "up") else big.blocks[0].ff.fc1
        chosen = (packed._ONE_ROW[key], packed._FEW_ROWS[key])
        if chosen == ("linear", "linear"):
            assert type(layer) is torch.nn.Linear
        else:
            assert (layer.one_row, layer.few_rows) == chosen
        if isinstance(big.out_head, DecodeLinear):  # the tied head reads the embedding's own storage
            assert big.out_head.weight.data_ptr() == big.tok_emb.weight.data_ptr()
