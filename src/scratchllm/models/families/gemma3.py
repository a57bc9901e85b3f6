"""Gemma 3 (text: 270M, 1B): sliding-window attention, sandwich norms, GeGLU, scaled embeddings, QK-norm.

What differs from Llama:
- 5 of every 6 layers attend only to the last 512 positions (`sliding_window`, `global_every: 6`), with RoPE
  base 10,000 there and 1,000,000 in the global layers; their KV cache holds 512 slots, not the context.
- Norms before *and* after each sublayer (`norm_placement: sandwich`; HF's input / post_attention /
  pre_feedforward / post_feedforward layernorms), each an RMSNorm scaling by (1 + weight); QK-norm per head.
- GeGLU feed-forward (tanh GELU gate); token embeddings times sqrt(emb_dim); head tied to the embedding;
  attention scaled by query_pre_attn_scalar^-1/2 (= head_dim^-1/2 for these sizes, 256 wide heads).
- Tokenizer: SentencePiece BPE with byte fallback (`tokenizer.model`, 262k pieces); chat: `<start_of_turn>`
  turns with the assistant named `model` (the `gemma` prompt style), ending at `<end_of_turn>`.
Google's repositories are gated: accept the licence on the hub and set HF_TOKEN. The 4B+ checkpoints are
multimodal (`gemma3`, a vision tower around this text model) and are not read here.
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchLLMError
from scratchllm.models.families.base import LlamaLayout

_GEMMA3 = {"arch": "gemma3", "vocab_size": 262144, "context_length": 32768, "head_dim": 256, "n_heads": 4,
           "n_kv_heads": 1, "sliding_window": 512, "global_every": 6, "rope_base": 1000000.0,
           "rope_local_base": 10000.0, "norm_eps": 1e-6, "tie_embeddings": True}  # fmt: skip


class Gemma3(LlamaLayout):
    name = "gemma3"
    hf_model_types = ("gemma3_text",)
    hf_architecture = "Gemma3ForCausalLM"
    components = {"norm": "rmsnorm_offset", "mlp": "geglu", "positions": "rope", "bias": False, "qk_norm": "head",
                  "norm_placement": "sandwich", "scale_embeddings": True}  # fmt: skip
    chat_style = "gemma"
    tokenizer_kind = "SentencePiece BPE with byte fallback"
    hf_sentencepiece_class = "GemmaTokenizer"
    gguf_arch = "gemma3"
    pairs = {
        **LlamaLayout.pairs, "norm2.weight": "pre_feedforward_layernorm.weight",
        "post_attn_norm.weight": "post_attention_layernorm.weight",
        "post_ff_norm.weight": "post_feedforward_layernorm.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
    }  # fmt: skip
    presets = {
        "gemma-3-270m": {**_GEMMA3, "emb_dim": 640, "n_layers": 18, "hidden_dim": 2048},
        "gemma-3-1b": {**_GEMMA3, "emb_dim": 1152, "n_layers": 26, "hidden_dim": 6912},
        "gemma3-tiny": {**_GEMMA3, "vocab_size": 512, "context_length": 128, "emb_dim": 64, "head_dim": 32,
                        "n_heads": 4, "n_kv_heads": 2, "n_layers": 3, "hidden_dim": 128, "sliding_window": 8,
                        "global_every": 3},
    }  # fmt: skip
    hub_names = {
        "gemma-3-270m": "google/gemma-3-270m", "gemma-3-270m-it": "google/gemma-3-270m-it",
        "gemma-3-1b": "google/gemma-3-1b-pt", "gemma-3-1b-it": "google/gemma-3-1b-it",
    }  # fmt: skip

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        for key in ("final_logit_softcapping", "attn_logit_softcapping"):
            if hf.get(key) is not None:
                raise ScratchLLMError(f"config.json: {key} is not supported (Gemma 3 has none)")
        if hf.get("use_bidirectional_attention"):
            raise ScratchLLMError("config.json: use_bidirectional_attention is not supported (a causal LM only)")
        if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ScratchLLMError(f"config.json: hidden_activation {hf['hidden_activation']!r} is not Gemma's")
        fields = self.common_from_hf(hf)
        scalar = hf.get("query_pre_attn_scalar")
        head_dim = fields["head_dim"] or fields["emb_dim"] // fields["n_heads"]
        if scalar is not None and scalar != head_dim:
            fields["attn_scale"] = float(scalar) ** -0.5
        return {**fields, "tie_embeddings": hf.get("tie_word_embeddings", True)}

    def config_to_hf(self, config) -> dict[str, Any]:
        hf = self.common_to_hf(config)
        del hf["hidden_act"]
        scalar = config.head_dim if config.attn_scale is None else config.attn_scale**-2
        return {**hf, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": scalar,
                "final_logit_softcapping": None, "attn_logit_softcapping": None}  # fmt: skip

    def gguf_hparams(self, config) -> dict[str, Any]:
        """llama.cpp's gemma3 fixes what our config leaves open: 1 global layer in 6, RoPE base 10,000 in the
        local ones, attention scaled by head_dim^-1/2; a model that differs is refused, not mis-run."""
        local_base = config.rope_local_base if config.rope_local_base is not None else config.rope_base
        if config.sliding_window is None or config.global_every != 6 or local_base != 10000.0:
            raise ScratchLLMError(f"convert --to gguf: llama.cpp's gemma3 needs sliding windows with every 6th layer "
                                  f"global and local RoPE base 10000; model {config.name!r} has global_every="
                                  f"{config.global_every}, local base {local_base}")  # fmt: skip
        if config.attn_scale is not None and abs(config.attn_scale - config.head_dim**-0.5) > 1e-9:
            raise ScratchLLMError(f"convert --to gguf: llama.cpp's gemma3 scales attention by head_dim^-1/2; model "
                                  f"{config.name!r} uses {config.attn_scale}")  # fmt: skip
        return super().gguf_hparams(config)


FAMILY = Gemma3()
