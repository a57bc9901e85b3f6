"""Translating between our parameter names and HuggingFace `transformers`' (GPT-2 and Llama).

Both directions are pure functions on state dicts and config dicts, so the parity tests, checkpoint
loading and `scratchllm convert` share one mapping. The differences they absorb:
- GPT-2's `Conv1D` layers store weights as (in, out): transposed relative to `nn.Linear`. Its attention
  projection `c_attn` is already fused q|k|v like ours; HF GPT-2 always has a qkv bias (zeros when our
  config has none).
- Llama keeps q, k, v separate (`q_proj`, `k_proj`, `v_proj`); we concatenate them into one fused matrix.
- Tied heads: HF may omit `lm_head.weight` when it is tied to the embedding.
"""

from __future__ import annotations

from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import ModelConfig

Tensors = dict[str, torch.Tensor]


# -- configs ---------------------------------------------------------------------------------------------
def config_from_hf(hf: dict[str, Any], name: str = "hf-model") -> ModelConfig:
    """A `config.json` of a GPT-2 or Llama model -> `ModelConfig`."""
    if not isinstance(hf, dict):
        raise ScratchLLMError("config.json: expected a JSON object of config fields")
    try:
        return _config_from_hf(hf, name)
    except KeyError as e:
        kind = hf.get("model_type")
        raise ScratchLLMError(f"config.json: missing field {e.args[0]!r} for model_type {kind!r}") from None


def _config_from_hf(hf: dict[str, Any], name: str) -> ModelConfig:
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ScratchLLMError(f"config.json: activation_function {hf['activation_function']!r} is not GPT-2's")
        return ModelConfig(
            name=name, arch="gpt2", vocab_size=hf["vocab_size"], context_length=hf["n_positions"],
            emb_dim=hf["n_embd"], n_heads=hf["n_head"], n_layers=hf["n_layer"], hidden_dim=hf.get("n_inner"),
            qkv_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )  # fmt: skip
    if kind == "llama":
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ScratchLLMError("config.json: Llama variants with attention_bias/mlp_bias are not supported")
        rope = dict(hf.get("rope_parameters") or {})
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling:
            if scaling.get("rope_type", scaling.get("type")) != "llama3":
                raise ScratchLLMError(f"config.json: rope scaling {scaling} is not supported (only 'llama3')")
            scaling = {
                "rope_type": "llama3", "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
                "high_freq_factor": scaling["high_freq_factor"],
                "original_context_length": scaling["original_max_position_embeddings"],
            }  # fmt: skip
        return ModelConfig(
            name=name, arch="llama", vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
            emb_dim=hf["hidden_size"], n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_layers=hf["num_hidden_layers"],
            head_dim=hf.get("head_dim"), hidden_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_base=theta, rope_scaling=scaling, tie_embeddings=hf.get("tie_word_embeddings", False),
        )  # fmt: skip
    raise ScratchLLMError(f"config.json: model_type {kind!r} is not supported (expected 'gpt2' or 'llama')")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """`ModelConfig` -> a `config.json` dict that `transformers.AutoConfig` reads."""
    if not config.is_family_standard():
        parts = f"{config.norm}, {config.mlp}, {config.positions}, bias {config.bias}"
        raise ScratchLLMError(f"model {config.name!r} mixes components ({parts}) that transformers' {config.arch} "
                              "class cannot hold")  # fmt: skip
    if config.arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.context_length, "n_embd": config.emb_dim, "n_layer": config.n_layers,
            "n_head": config.n_heads, "n_inner": config.hidden_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
            "resid_pdrop": config.drop_rate, "embd_pdrop": config.drop_rate, "attn_pdrop": config.drop_rate,
            "bos_token_id": 50256, "eos_token_id": 50256,
        }  # fmt: skip
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length, "hidden_size": config.emb_dim,
        "intermediate_size": config.hidden_dim, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "num_hidden_layers": config.n_layers, "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_base, "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
    }  # fmt: skip
    if config.rope_scaling:
        s = config.rope_scaling
        hf["rope_scaling"] = {
            "rope_type": "llama3", "factor": s["factor"], "low_freq_factor": s["low_freq_factor"],
            "high_freq_factor": s["high_freq_factor"], "original_max_position_embeddings": s["original_context_length"],
        }  # fmt: skip
    return hf


# -- weights ---------------------------------------------------------------------------------------------
def _take(sd: Tensors, key: str, used: set[str]) -> torch.Tensor:
    if key not in sd:
        raise ScratchLLMError(f"checkpoint is missing tensor {key!r}")
    used.add(key)
    return sd[key]


def _check_unused(sd: Tensors, used: set[str], ignorable: tuple[str, ...] = ()) -> None:
    extra = sorted(k for k in sd if k not in used and not k.endswith(ignorable))
    if extra:
        raise ScratchLLMError(f"checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")


def state_dict_from_hf(sd: Tensors, config: ModelConfig) -> Tensors:
    """HF GPT2LMHeadModel / LlamaForCausalLM tensors -> our `Transformer` state dict."""
    used: set[str] = set()
    out: Tensors = {}
    if config.arch == "gpt2":
        p = "transformer." if any(k.startswith("transformer.") for k in sd) else ""
        out["tok_emb.weight"] = _take(sd, f"{p}wte.weight", used)
        out["pos_emb.weight"] = _take(sd, f"{p}wpe.weight", used)
        for i in range(config.n_layers):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[f"{b}{ours}.weight"] = _take(sd, f"{h}{theirs}.weight", used)
                out[f"{b}{ours}.bias"] = _take(sd, f"{h}{theirs}.bias", used)
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("ff.fc1", "mlp.c_fc"),
                                 ("ff.fc2", "mlp.c_proj")):  # fmt: skip
                out[f"{b}{ours}.weight"] = _take(sd, f"{h}{theirs}.weight", used).t()
                bias = _take(sd, f"{h}{theirs}.bias", used)
                if ours != "attn.qkv" or config.qkv_bias:
                    out[f"{b}{ours}.bias"] = bias
        out["final_norm.weight"] = _take(sd, f"{p}ln_f.weight", used)
        out["final_norm.bias"] = _take(sd, f"{p}ln_f.bias", used)
        head = "lm_head.weight"
        ignorable = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers saved by old transformers
    else:
        p = "model."
        out["tok_emb.weight"] = _take(sd, f"{p}embed_tokens.weight", used)
        for i in range(config.n_layers):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out[f"{b}norm1.weight"] = _take(sd, f"{h}input_layernorm.weight", used)
            out[f"{b}norm2.weight"] = _take(sd, f"{h}post_attention_layernorm.weight", used)
            out[f"{b}attn.qkv.weight"] = torch.cat(
                [_take(sd, f"{h}self_attn.{n}_proj.weight", used) for n in ("q", "k", "v")], dim=0
            )
            out[f"{b}attn.proj.weight"] = _take(sd, f"{h}self_attn.o_proj.weight", used)
            for n in ("gate", "up", "down"):
                out[f"{b}ff.{n}.weight"] = _take(sd, f"{h}mlp.{n}_proj.weight", used)
        out["final_norm.weight"] = _take(sd, f"{p}norm.weight", used)
        head = "lm_head.weight"
        ignorable = ("rotary_emb.inv_freq",)
    if config.tie_embeddings:
        used.add(head)  # a tied head may be saved or not; the embedding is what counts
        out["out_head.weight"] = out["tok_emb.weight"]
    else:
        out["out_head.weight"] = _take(sd, head, used)
    _check_unused(sd, used, ignorable)
    return out


def state_dict_to_hf(sd: Tensors, config: ModelConfig) -> Tensors:
    """Our `Transformer` state dict -> HF GPT2LMHeadModel / LlamaForCausalLM tensors (contiguous, untied)."""
    out: Tensors = {}
    if config.arch == "gpt2":
        out["transformer.wte.weight"] = sd["tok_emb.weight"]
        out["transformer.wpe.weight"] = sd["pos_emb.weight"]
        for i in range(config.n_layers):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[f"{h}{theirs}.weight"] = sd[f"{b}{ours}.weight"]
                out[f"{h}{theirs}.bias"] = sd[f"{b}{ours}.bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("ff.fc1", "mlp.c_fc"),
                                 ("ff.fc2", "mlp.c_proj")):  # fmt: skip
                w = sd[f"{b}{ours}.weight"]
                out[f"{h}{theirs}.weight"] = w.t().contiguous()
                out[f"{h}{theirs}.bias"] = sd.get(f"{b}{ours}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
        out["transformer.ln_f.weight"] = sd["final_norm.weight"]
        out["transformer.ln_f.bias"] = sd["final_norm.bias"]
    else:
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(config.n_layers):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[f"{h}input_layernorm.weight"] = sd[f"{b}norm1.weight"]
            out[f"{h}post_attention_layernorm.weight"] = sd[f"{b}norm2.weight"]
            q, k, v = sd[f"{b}attn.qkv.weight"].split([q_dim, kv_dim, kv_dim], dim=0)
            for n, w in (("q", q), ("k", k), ("v", v)):
                out[f"{h}self_attn.{n}_proj.weight"] = w.contiguous()
            out[f"{h}self_attn.o_proj.weight"] = sd[f"{b}attn.proj.weight"]
            for n in ("gate", "up", "down"):
                out[f"{h}mlp.{n}_proj.weight"] = sd[f"{b}ff.{n}.weight"]
        out["model.norm.weight"] = sd["final_norm.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["out_head.weight"]
    return out
