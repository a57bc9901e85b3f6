"""Olmo 3 (AI2's fully open 7B): norms after each sublayer, QK-norm over whole q and k, sliding windows.

What differs from Llama:
- `norm_placement: post`: x + norm(f(x)), no norm on a sublayer's input (HF's post_attention and
  post_feedforward layernorms), which keeps the residual stream's scale in check in long runs.
- QK-norm over all query features and all key features at once (`qk_norm: full`), not per head.
- 3 of every 4 layers attend to the last 4,096 positions (`sliding_window`, `global_every: 4`).
- Multi-head attention (32 key/value heads), no tied head; tokenizer: byte-level BPE in tokenizer.json
  (cl100k-style, 100k tokens); chat: ChatML (the `chatml` prompt style).
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.models.families.base import LlamaLayout


class Olmo3(LlamaLayout):
    name = "olmo3"
    hf_model_types = ("olmo3",)
    hf_architecture = "Olmo3ForCausalLM"
    components = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "qk_norm": "full",
                  "norm_placement": "post"}  # fmt: skip
    chat_style = "chatml"
    gguf_arch = "olmo2"  # llama.cpp reads Olmo 3 as Olmo 2 with sliding windows
    pairs = {
        "post_attn_norm.weight": "post_attention_layernorm.weight",
        "post_ff_norm.weight": "post_feedforward_layernorm.weight", "attn.proj.weight": "self_attn.o_proj.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
        "ff.gate.weight": "mlp.gate_proj.weight", "ff.up.weight": "mlp.up_proj.weight",
        "ff.down.weight": "mlp.down_proj.weight",
    }  # fmt: skip
    presets = {
        "olmo-3-7b": {"arch": "olmo3", "vocab_size": 100278, "context_length": 65536, "emb_dim": 4096, "n_heads": 32,
                      "n_layers": 32, "hidden_dim": 11008, "rope_base": 500000.0, "sliding_window": 4096,
                      "global_every": 4, "norm_eps": 1e-6},
        "olmo3-tiny": {"arch": "olmo3", "vocab_size": 512, "context_length": 128, "emb_dim": 64, "n_heads": 4,
                       "n_layers": 4, "hidden_dim": 128, "sliding_window": 8, "global_every": 4},
    }  # fmt: skip
    hub_names = {"olmo-3-7b": "allenai/Olmo-3-1025-7B", "olmo-3-7b-instruct": "allenai/Olmo-3-7B-Instruct"}

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return self.common_from_hf(hf)

    def config_to_hf(self, config) -> dict[str, Any]:
        return self.common_to_hf(config)

    def gguf_hparams(self, config) -> dict[str, Any]:
        if config.sliding_window is not None and config.global_every != 4:  # llama.cpp fixes 1 global in 4
            raise ScratchLLMError(f"convert --to gguf: llama.cpp's olmo2 needs every 4th layer global; model "
                                  f"{config.name!r} has global_every={config.global_every}")  # fmt: skip
        return super().gguf_hparams(config)


FAMILY = Olmo3()
