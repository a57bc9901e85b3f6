"""Small random transformers models of every family we speak, and ours built from the same weights.

One place that knows how to build each family's HF class from a tiny config, so parity, generation, export
and PEFT tests run over every family by parametrising on `FAMILIES`.
"""

from __future__ import annotations

import torch
import transformers

from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf
from scratchllm.models import Transformer

_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=2, max_position_embeddings=128, vocab_size=300)  # fmt: skip
BUILDERS = {
    "gpt2": lambda **kw: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 300, **kw})),
    "llama": lambda **kw: transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_LLAMA_LIKE, **kw})),
    # head_dim 32 != 64 / 4: Qwen3's head width is its own field
    "qwen3": lambda **kw: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **{**_LLAMA_LIKE, "head_dim": 32, "tie_word_embeddings": True, **kw})),
    "qwen3_moe": lambda **kw: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **{**_LLAMA_LIKE, "head_dim": 32, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
           "norm_topk_prob": True, **kw})),
}  # fmt: skip
FAMILIES = list(BUILDERS)


def hf_model(arch: str, seed: int = 0, **config) -> torch.nn.Module:
    """A random HF model of `arch`; routers get large weights so no expert choice is a near tie."""
    torch.manual_seed(seed)
    model = BUILDERS[arch](**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 1.0)
    return model


def ours_from(hf: torch.nn.Module, name: str = "hf-model") -> Transformer:
    config = config_from_hf(hf.config.to_dict(), name)
    ours = Transformer(config).eval()
    ours.load_state_dict(state_dict_from_hf(hf.state_dict(), config))
    return ours


def pair(arch: str, seed: int = 0, **config) -> tuple[torch.nn.Module, Transformer]:
    hf = hf_model(arch, seed, **config)
    return hf, ours_from(hf)
