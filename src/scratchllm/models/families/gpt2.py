"""GPT-2 (book ch. 4): LayerNorm, a GELU MLP, learned absolute positions, biases; HF's GPT2LMHeadModel.

HF differences absorbed here: GPT-2's `Conv1D` layers store weights as (in, out), transposed relative to
`nn.Linear`; its `c_attn` is already fused q|k|v like ours and always has a bias (zeros when our config has
none); old files carry causal-mask buffers (`attn.bias`, `attn.masked_bias`) that hold no weights.
PEFT: our three per-slice qkv adapters become one rank-3r adapter on `c_attn` whose B is block-diagonal, its
alpha 3 x alpha so PEFT's alpha / rank stays ours (`rank_pattern` / `alpha_pattern`).
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.models.families.base import Family, _block_part, _check_unused, _head_from_hf, take

# OpenAI's released GPT-2 weights use qkv biases and tie the output head to the token embedding.
_GPT2 = {"arch": "gpt2", "vocab_size": 50257, "context_length": 1024, "qkv_bias": True, "tie_embeddings": True}
# (ours, theirs) per block; the matrices are Conv1D (transposed) in HF.
_LINEARS = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("ff.fc1", "mlp.c_fc"), ("ff.fc2", "mlp.c_proj"))
_NORMS = (("norm1", "ln_1"), ("norm2", "ln_2"))
# (ours, llama.cpp's) per block, each with a weight and a bias
_GGUF_LAYER = (("norm1", "attn_norm"), ("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"), ("norm2", "ffn_norm"),
               ("ff.fc1", "ffn_up"), ("ff.fc2", "ffn_down"))  # fmt: skip


class GPT2(Family):
    name = "gpt2"
    hf_model_types = ("gpt2",)
    hf_architecture = "GPT2LMHeadModel"
    components = {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "bias": True}
    peft_fan_in_fan_out = True
    gguf_arch = "gpt2"
    ignorable = (".attn.bias", ".attn.masked_bias")
    presets = {
        "gpt2-small": {**_GPT2, "emb_dim": 768, "n_heads": 12, "n_layers": 12},
        "gpt2-medium": {**_GPT2, "emb_dim": 1024, "n_heads": 16, "n_layers": 24},
        "gpt2-large": {**_GPT2, "emb_dim": 1280, "n_heads": 20, "n_layers": 36},
        "gpt2-xl": {**_GPT2, "emb_dim": 1600, "n_heads": 25, "n_layers": 48},
        # The book's GPT_CONFIG_124M: no qkv bias, dropout 0.1, untied head (163,009,536 parameters).
        "gpt2-124m-book": {**_GPT2, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "qkv_bias": False,
                           "drop_rate": 0.1, "tie_embeddings": False},
        # Small models that train on a 2-core CPU in minutes; gpt-demo is the default run's model, gpt-tiny tests.
        "gpt-demo": {"arch": "gpt2", "vocab_size": 8192, "context_length": 256, "emb_dim": 256, "n_heads": 8,
                     "n_layers": 6, "tie_embeddings": True},
        "gpt-tiny": {"arch": "gpt2", "vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4,
                     "n_layers": 2, "qkv_bias": True},
    }  # fmt: skip
    hub_names = {
        "gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
        "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
    }  # fmt: skip

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ScratchLLMError(f"config.json: activation_function {hf['activation_function']!r} is not GPT-2's")
        return {
            "vocab_size": hf["vocab_size"], "context_length": hf["n_positions"], "emb_dim": hf["n_embd"],
            "n_heads": hf["n_head"], "n_layers": hf["n_layer"], "hidden_dim": hf.get("n_inner"), "qkv_bias": True,
            "tie_embeddings": hf.get("tie_word_embeddings", True), "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        }  # fmt: skip

    def config_to_hf(self, config) -> dict[str, Any]:
        self.check_exportable(config)
        return {
            "architectures": [self.hf_architecture], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.context_length, "n_embd": config.emb_dim, "n_layer": config.n_layers,
            "n_head": config.n_heads, "n_inner": config.hidden_dim, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
            "resid_pdrop": config.drop_rate, "embd_pdrop": config.drop_rate, "attn_pdrop": config.drop_rate,
            "bos_token_id": 50256, "eos_token_id": 50256,
        }  # fmt: skip

    def tensors_from_hf(self, sd, config):
        used: set[str] = set()
        p = "transformer." if any(k.startswith("transformer.") for k in sd) else ""
        out = {"tok_emb.weight": take(sd, f"{p}wte.weight", used), "pos_emb.weight": take(sd, f"{p}wpe.weight", used)}
        for i in range(config.n_layers):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for ours, theirs in _NORMS:
                for part in ("weight", "bias"):
                    out[f"{b}{ours}.{part}"] = take(sd, f"{h}{theirs}.{part}", used)
            for ours, theirs in _LINEARS:
                out[f"{b}{ours}.weight"] = take(sd, f"{h}{theirs}.weight", used).t()
                bias = take(sd, f"{h}{theirs}.bias", used)
                if ours != "attn.qkv" or config.qkv_bias:
                    out[f"{b}{ours}.bias"] = bias
        out["final_norm.weight"] = take(sd, f"{p}ln_f.weight", used)
        out["final_norm.bias"] = take(sd, f"{p}ln_f.bias", used)
        _head_from_hf(sd, config, used, out)
        _check_unused(sd, used, self.ignorable)
        return out

    def tensors_to_hf(self, sd, config):
        import torch

        out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
        for i in range(config.n_layers):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs in _NORMS:
                for part in ("weight", "bias"):
                    out[f"{h}{theirs}.{part}"] = sd[f"{b}{ours}.{part}"]
            for ours, theirs in _LINEARS:
                w = sd[f"{b}{ours}.weight"]
                out[f"{h}{theirs}.weight"] = w.t().contiguous()
                out[f"{h}{theirs}.bias"] = sd.get(f"{b}{ours}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
        out["transformer.ln_f.weight"] = sd["final_norm.weight"]
        out["transformer.ln_f.bias"] = sd["final_norm.bias"]
        if not config.tie_embeddings:
            out["lm_head.weight"] = sd["out_head.weight"]
        return out

    def gguf_hparams(self, config) -> dict[str, Any]:
        self.check_exportable(config)
        return {
            "context_length": config.context_length, "embedding_length": config.emb_dim,
            "feed_forward_length": config.hidden_dim, "block_count": config.n_layers,
            "attention.head_count": config.n_heads, "attention.layer_norm_epsilon": config.norm_eps,
            "vocab_size": config.vocab_size,
        }  # fmt: skip

    def gguf_tensors(self, sd, config):
        """llama.cpp's gpt2 names; its matrices are (out, in) like ours, and its qkv always has a bias."""
        import torch

        out = {"token_embd.weight": sd["tok_emb.weight"], "position_embd.weight": sd["pos_emb.weight"],
               "output_norm.weight": sd["final_norm.weight"], "output_norm.bias": sd["final_norm.bias"]}  # fmt: skip
        for i in range(config.n_layers):
            b, g = f"blocks.{i}.", f"blk.{i}."
            for ours, theirs in _GGUF_LAYER:
                for part in ("weight", "bias"):
                    w = sd.get(f"{b}{ours}.{part}")
                    if w is None:  # a qkv without bias
                        w = torch.zeros(sd[f"{b}{ours}.weight"].shape[0])
                    out[f"{g}{theirs}.{part}"] = w
        if not config.tie_embeddings:
            out["output.weight"] = sd["out_head.weight"]
        return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}

    def peft_modules(self, name, a, b, rank, splits):
        import torch

        if name == "out_head":
            return [("lm_head", a, b, rank)]
        i, rest = _block_part(name)
        prefix = f"transformer.h.{i}."
        theirs = dict(_LINEARS).get(rest)
        if theirs is None:
            raise ScratchLLMError(f"PEFT export: no HuggingFace module for LoRA layer {name!r}")
        if rest == "attn.qkv" and len(splits) > 1:
            block_b = torch.zeros(b.shape[0], len(splits) * rank, dtype=b.dtype)
            row = 0
            for s, size in enumerate(splits):
                block_b[row : row + size, s * rank : (s + 1) * rank] = b[row : row + size]
                row += size
            return [(prefix + theirs, a, block_b, len(splits) * rank)]
        return [(prefix + theirs, a, b, rank)]


FAMILY = GPT2()
