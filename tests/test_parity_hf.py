"""Numeric parity with HuggingFace `transformers` models built from the same random weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf, state_dict_to_hf
from scratchllm.models import Transformer
from scratchllm.training.loss import cross_entropy, lm_loss
from tests.hf_families import hf_model as hf_model_of

GPT2_CASES = {
    "tied": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=300, tie_word_embeddings=True),
    "untied": dict(n_embd=48, n_layer=3, n_head=3, n_positions=64, vocab_size=257, tie_word_embeddings=False),
}
LLAMA_CASES = {
    "gqa-untied": dict(hidden_size=64, intermediate_size=160, num_attention_heads=8, num_key_value_heads=2,
                       num_hidden_layers=2, max_position_embeddings=128, vocab_size=300, tie_word_embeddings=False),
    "mqa-tied": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                     num_hidden_layers=2, max_position_embeddings=96, vocab_size=260, tie_word_embeddings=True,
                     rope_theta=500000.0),
    "mha-llama3-scaling": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                               num_hidden_layers=2, max_position_embeddings=256, vocab_size=280,
                               rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64}),
}  # fmt: skip
LATER_CASES = {  # (family, HF config fields beyond tests/hf_families.py's tiny defaults)
    "qwen3-tied": ("qwen3", {}),
    "qwen3-untied-mqa": ("qwen3", dict(num_key_value_heads=1, tie_word_embeddings=False, head_dim=24)),
    "qwen3-moe-topk-normalised": ("qwen3_moe", {}),
    "qwen3-moe-raw-topk-3-of-6": ("qwen3_moe", dict(num_experts=6, num_experts_per_tok=3, norm_topk_prob=False)),
    # windows of 8 on sequences of 17 and 128: most keys are outside a local layer's window
    "gemma3-window-8": ("gemma3", {}),
    "gemma3-linear-rope-own-scale": ("gemma3", dict(query_pre_attn_scalar=20, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}})),
    "olmo3-window-8": ("olmo3", {}),
    "olmo3-all-local-mqa": ("olmo3", dict(num_key_value_heads=1, layer_types=["sliding_attention"] * 4)),
}


def _perturb(model: torch.nn.Module) -> None:
    """Random norms and biases too (HF initialises them to 1/0, which would hide mapping mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                offset = name.endswith("bias") or isinstance(p, torch.nn.Parameter) and not p.abs().sum()
                p.normal_(mean=0.0 if offset else 1.0, std=0.1)  # Gemma's (1 + w) norms start at w = 0


def _ours_from(hf_model, name: str, device: str = "cpu") -> Transformer:
    config = config_from_hf(hf_model.config.to_dict(), name)
    ours = Transformer(config).eval()
    ours.load_state_dict(state_dict_from_hf(hf_model.state_dict(), config))
    return ours.to(device)


def _batches(vocab: int, context: int, device: str = "cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (2, n), generator=g).to(device) for n in (17, context)]


def _assert_logits_match(hf_model, ours, vocab, context):
    hf_model.to(ours.device)
    for idx in _batches(vocab, context, ours.device):
        with torch.no_grad():
            expected = hf_model(idx).logits
            got = ours(idx)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4
    _assert_training_grads_match(hf_model, ours, idx)


def _assert_training_grads_match(hf_model, ours, idx):
    """The training path (fused head + loss, gradients through attention) gives HF's loss and parameter gradients."""
    inputs, targets = idx[:, :-1], idx[:, 1:]
    hf_loss = cross_entropy(hf_model(inputs).logits, targets)
    hf_loss.backward()
    loss = lm_loss(ours, inputs, targets)
    loss.backward()
    assert abs(loss.item() - hf_loss.item()) <= 1e-5
    # HF's gradients in our names (the family's own mapping reads transformers' in-memory layout too)
    hf_grads = state_dict_from_hf({n: p.grad for n, p in hf_model.named_parameters()}, ours.config)
    for name, p in ours.named_parameters():
        grad, expected = p.grad, hf_grads[name]
        assert (grad - expected).abs().max().item() <= 1e-5 + 1e-4 * expected.abs().max().item(), name


@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_parity(case, device):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**GPT2_CASES[case], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf_model = transformers.GPT2LMHeadModel(cfg).eval()
    _perturb(hf_model)
    ours = _ours_from(hf_model, case, device)
    assert ours.config.tie_embeddings == cfg.tie_word_embeddings
    _assert_logits_match(hf_model, ours, cfg.vocab_size, cfg.n_positions)


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_llama_parity(case, device):
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_CASES[case])).eval()
    _perturb(hf_model)
    ours = _ours_from(hf_model, case, device)
    cfg = hf_model.config
    assert ours.config.n_kv_heads == cfg.num_key_value_heads
    _assert_logits_match(hf_model, ours, cfg.vocab_size, cfg.max_position_embeddings)


@pytest.mark.parametrize("case", list(LATER_CASES))
def test_later_family_parity(case, device):
    """Qwen3 (QK-norm, its own head_dim), Qwen3-MoE (routed experts), Gemma 3 (sliding windows with their own
    RoPE base, sandwich norms, GeGLU, scaled embeddings) and Olmo 3 (post-norms, QK-norm over all heads):
    logits and training gradients."""
    family, fields = LATER_CASES[case]
    hf_model = hf_model_of(family, **fields)
    _perturb(hf_model)
    ours = _ours_from(hf_model, case, device)
    _assert_logits_match(hf_model, ours, hf_model.config.vocab_size, hf_model.config.max_position_embeddings)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "qwen3-tiny", "qwen3-moe-tiny", "gemma3-tiny",
                                    "olmo3-tiny"])
def test_export_to_hf_roundtrip(preset, tmp_path):
    """Our random model -> an HF folder (`convert --to hf`'s writer) -> transformers loads it with our logits and
    counts our parameters; and the names map back to the same tensors."""
    from scratchllm.checkpoints.convert import to_hf
    from scratchllm.models import build_model
    from scratchllm.models.stats import model_stats

    torch.manual_seed(1)
    ours = build_model(preset).eval()
    _perturb(ours)
    to_hf(ours, None, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf_model.num_parameters() == ours.num_parameters() == model_stats(ours.config).params
    _assert_logits_match(hf_model, ours, ours.config.vocab_size, ours.config.context_length)
    back = state_dict_from_hf(state_dict_to_hf(ours.state_dict(), ours.config), ours.config)
    for k, v in ours.state_dict().items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize(
    "head_dim,factor,old_context",
    [(64, 32.0, 8192), (128, 8.0, 8192), (16, 8.0, 64)],  # Llama 3.2, Llama 3.1, the parity case above
)
def test_llama3_rope_frequencies_match_transformers(head_dim, factor, old_context):
    """Llama 3.1's smooth band between kept and scaled frequencies, against transformers' own formula.

    Each case has frequencies on both sides of the band and inside it, so a hard switch would fail here.
    """
    import math

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from scratchllm.models.rope import inverse_frequencies, llama3_scaled_frequencies

    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": old_context}  # fmt: skip
    hf_config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                         rope_theta=500000.0, rope_scaling=scaling)  # fmt: skip
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    base = inverse_frequencies(head_dim, 500000.0)
    wavelength = 2 * math.pi / base
    in_band = (wavelength > old_context / 4) & (wavelength < old_context)
    assert in_band.any() and (wavelength < old_context / 4).any() and (wavelength > old_context).any()
    ours = llama3_scaled_frequencies(base, {**scaling, "original_context_length": old_context})
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)
