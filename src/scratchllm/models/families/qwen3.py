"""Qwen3, dense (0.6B-8B) and mixture of experts (30B-A3B): the Llama layout plus QK-norm and, for MoE, experts.

What differs from Llama:
- QK-norm: an RMSNorm over each head's query and key (`qk_norm: head`) before RoPE, which keeps attention
  logits bounded without Qwen2's qkv biases; head_dim (128) is independent of emb_dim / n_heads.
- The small sizes (0.6B-4B) tie the output head to the embedding; 8B and the MoE do not.
- Qwen3-MoE replaces every feed-forward by 128 SwiGLU experts of width 768 and a router that picks 8 per
  token, their weights renormalised to sum to 1 (`norm_topk`); a Switch-style load-balancing loss
  (`router_aux_loss_coef`) keeps the experts used evenly in training.
- Tokenizer: byte-level BPE in `tokenizer.json` (151,643 tokens + 26 specials, digits split one by one);
  chat: ChatML with Qwen3's thinking switch (the `qwen3` prompt style).

HF files store each expert's three matrices separately (`mlp.experts.E.gate_proj.weight`, ...); we stack them
into one (experts, out, in) tensor per kind (gate and up together) so the grouped product reads them in one
call, the layout transformers 5 keeps in memory (`mlp.experts.gate_up_proj`); both are read.
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.models.families.base import LlamaLayout, _block_part, take

_QWEN3 = {"vocab_size": 151936, "context_length": 40960, "head_dim": 128, "n_kv_heads": 8, "rope_base": 1000000.0,
          "norm_eps": 1e-6}  # fmt: skip


class Qwen3(LlamaLayout):
    name = "qwen3"
    hf_model_types = ("qwen3",)
    hf_architecture = "Qwen3ForCausalLM"
    components = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "qk_norm": "head"}
    chat_style = "qwen3"
    gguf_arch = "qwen3"
    pairs = {**LlamaLayout.pairs, "attn.q_norm.weight": "self_attn.q_norm.weight",
             "attn.k_norm.weight": "self_attn.k_norm.weight"}  # fmt: skip
    presets = {
        "qwen3-0.6b": {"arch": "qwen3", **_QWEN3, "emb_dim": 1024, "n_heads": 16, "n_layers": 28, "hidden_dim": 3072,
                       "tie_embeddings": True},
        "qwen3-1.7b": {"arch": "qwen3", **_QWEN3, "emb_dim": 2048, "n_heads": 16, "n_layers": 28, "hidden_dim": 6144,
                       "tie_embeddings": True},
        "qwen3-4b": {"arch": "qwen3", **_QWEN3, "emb_dim": 2560, "n_heads": 32, "n_layers": 36, "hidden_dim": 9728,
                     "tie_embeddings": True},
        "qwen3-8b": {"arch": "qwen3", **_QWEN3, "emb_dim": 4096, "n_heads": 32, "n_layers": 36, "hidden_dim": 12288},
        "qwen3-tiny": {"arch": "qwen3", "vocab_size": 512, "context_length": 128, "emb_dim": 64, "n_heads": 4,
                       "n_kv_heads": 2, "head_dim": 32, "n_layers": 2, "hidden_dim": 128, "tie_embeddings": True},
    }  # fmt: skip
    hub_names = {
        "qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B",
        "qwen3-8b": "Qwen/Qwen3-8B", "qwen3-0.6b-base": "Qwen/Qwen3-0.6B-Base",
        "qwen3-1.7b-base": "Qwen/Qwen3-1.7B-Base", "qwen3-4b-base": "Qwen/Qwen3-4B-Base",
        "qwen3-8b-base": "Qwen/Qwen3-8B-Base",
    }  # fmt: skip

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        if hf.get("use_sliding_window"):
            raise ScratchLLMError("config.json: Qwen3 with use_sliding_window is not supported")
        return self.common_from_hf(hf)

    def config_to_hf(self, config) -> dict[str, Any]:
        return {**self.common_to_hf(config), "use_sliding_window": False}


class Qwen3Moe(Qwen3):
    name = "qwen3_moe"
    hf_model_types = ("qwen3_moe",)
    hf_architecture = "Qwen3MoeForCausalLM"
    components = {**Qwen3.components, "mlp": "moe"}
    pairs = {k: v for k, v in Qwen3.pairs.items() if not k.startswith("ff.")} | {"ff.router.weight": "mlp.gate.weight"}
    peft_names = {"attn.proj": "self_attn.o_proj"}  # experts are not Linear layers; LoRA adapts attention
    presets = {
        "qwen3-30b-a3b": {"arch": "qwen3_moe", **_QWEN3, "n_kv_heads": 4, "emb_dim": 2048, "n_heads": 32,
                          "n_layers": 48, "hidden_dim": 6144, "n_experts": 128, "n_experts_active": 8,
                          "expert_hidden_dim": 768, "router_aux_loss_coef": 0.001},
        "qwen3-moe-tiny": {"arch": "qwen3_moe", "vocab_size": 512, "context_length": 128, "emb_dim": 64, "n_heads": 4,
                           "n_kv_heads": 2, "head_dim": 32, "n_layers": 2, "hidden_dim": 128, "n_experts": 8,
                           "n_experts_active": 2, "expert_hidden_dim": 32, "router_aux_loss_coef": 0.001},
    }  # fmt: skip
    hub_names = {"qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b-base": "Qwen/Qwen3-30B-A3B-Base"}
    gguf_arch = "qwen3moe"

    def gguf_hparams(self, config) -> dict[str, Any]:
        if not config.norm_topk:  # llama.cpp's qwen3moe always renormalises the chosen experts' weights
            raise ScratchLLMError(f"convert --to gguf: model {config.name!r} has norm_topk off, which llama.cpp's "
                                  "qwen3moe cannot hold")  # fmt: skip
        return super().gguf_hparams(config)

    def peft_expert_parameter(self, key: str) -> tuple[str, str, bool]:
        i, rest = _block_part(key)
        names = {"ff.gate_up": "mlp.experts.gate_up_proj", "ff.down": "mlp.experts.down_proj"}
        # PEFT wraps gate_up_proj first (inside), then down_proj around it, in target_parameters' order.
        return f"model.layers.{i}.mlp.experts", names[rest], rest == "ff.gate_up"

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
            raise ScratchLLMError("config.json: Qwen3-MoE with dense layers (decoder_sparse_step, mlp_only_layers) "
                                  "is not supported")  # fmt: skip
        return {
            **super().config_from_hf(hf), "n_experts": hf.get("num_experts") or hf["num_local_experts"],
            "n_experts_active": hf["num_experts_per_tok"],
            "expert_hidden_dim": hf["moe_intermediate_size"], "norm_topk": bool(hf.get("norm_topk_prob", False)),
            "router_aux_loss_coef": float(hf.get("router_aux_loss_coef", 0.001)),
        }  # fmt: skip

    def config_to_hf(self, config) -> dict[str, Any]:
        return {
            **super().config_to_hf(config), "num_experts": config.n_experts,
            "num_experts_per_tok": config.n_experts_active, "moe_intermediate_size": config.expert_hidden_dim,
            "norm_topk_prob": config.norm_topk, "router_aux_loss_coef": config.router_aux_loss_coef,
            "decoder_sparse_step": 1, "mlp_only_layers": [],
        }  # fmt: skip

    def extra_from_hf(self, sd, config, used, layer, out) -> None:
        import torch

        h, b = f"model.layers.{layer}.mlp.experts.", f"blocks.{layer}.ff."
        if h + "gate_up_proj" in sd:  # transformers 5's in-memory layout: ours, (E, 2H, d) and (E, d, H)
            out[b + "gate_up"] = take(sd, h + "gate_up_proj", used)
            out[b + "down"] = take(sd, h + "down_proj", used)
            return
        stack = lambda kind: torch.stack(  # noqa: E731  each (out, in)
            [take(sd, f"{h}{e}.{kind}_proj.weight", used) for e in range(config.n_experts)]
        )
        out[b + "gate_up"] = torch.cat([stack("gate"), stack("up")], dim=1)
        out[b + "down"] = stack("down")

    def extra_to_hf(self, sd, config, layer, out) -> None:
        h, b = f"model.layers.{layer}.mlp.experts.", f"blocks.{layer}.ff."
        gate, up = sd[b + "gate_up"].chunk(2, dim=1)
        down = sd[b + "down"]
        for e in range(config.n_experts):
            for kind, w in (("gate", gate), ("up", up), ("down", down)):
                out[f"{h}{e}.{kind}_proj.weight"] = w[e].contiguous()


FAMILY = Qwen3()
MOE_FAMILY = Qwen3Moe()
