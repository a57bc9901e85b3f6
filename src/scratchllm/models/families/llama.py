"""Llama 2 / 3.x: RMSNorm, SwiGLU, RoPE (with Llama 3.1 frequency scaling), grouped-query attention, no biases.

HF layout: `LlamaLayout` (separate q/k/v projections, fused into our `attn.qkv`). Meta's original layout is
read by `checkpoints/meta.py`. Tokenizers: Llama 2's SentencePiece `tokenizer.model`, Llama 3's tiktoken-style
byte-level BPE in `tokenizer.json`; Llama 3 instruct checkpoints chat in the `llama3` style.
Meta's repositories are gated: accept the licence on the hub and set HF_TOKEN.
"""

from __future__ import annotations

from typing import Any

from scratchllm.models.families.base import LlamaLayout

# Llama 3 models share the 128k tiktoken vocabulary, 8 key/value heads and RoPE base 500,000; 3.1 and 3.2
# stretch the 8k pretraining context to 128k by RoPE frequency scaling (factor 8 for 8B, 32 for 1B/3B).
_LLAMA3 = {"arch": "llama", "vocab_size": 128256, "n_kv_heads": 8, "rope_base": 500000.0}


def _long(factor: float) -> dict[str, Any]:
    return {"context_length": 131072, "rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_context_length": 8192}}  # fmt: skip


class Llama(LlamaLayout):
    name = "llama"
    hf_model_types = ("llama",)
    hf_architecture = "LlamaForCausalLM"
    components = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False}
    chat_style = "llama3"
    gguf_arch = "llama"
    gguf_interleaved_rope = True
    presets = {
        "llama2-7b": {"arch": "llama", "vocab_size": 32000, "context_length": 4096, "emb_dim": 4096, "n_heads": 32,
                      "n_layers": 32, "hidden_dim": 11008},
        "llama3-8b": {**_LLAMA3, "context_length": 8192, "emb_dim": 4096, "n_heads": 32, "n_layers": 32,
                      "hidden_dim": 14336},
        "llama3.1-8b": {**_LLAMA3, **_long(8.0), "emb_dim": 4096, "n_heads": 32, "n_layers": 32, "hidden_dim": 14336},
        "llama3.2-1b": {**_LLAMA3, **_long(32.0), "emb_dim": 2048, "n_heads": 32, "n_layers": 16, "hidden_dim": 8192,
                        "tie_embeddings": True},
        "llama3.2-3b": {**_LLAMA3, **_long(32.0), "emb_dim": 3072, "n_heads": 24, "n_layers": 28, "hidden_dim": 8192,
                        "tie_embeddings": True},
        # Small models that train on a 2-core CPU; llama-tiny is for tests.
        "llama-demo": {"arch": "llama", "vocab_size": 8192, "context_length": 256, "emb_dim": 256, "n_heads": 8,
                       "n_kv_heads": 2, "n_layers": 6, "hidden_dim": 688, "tie_embeddings": True},
        "llama-tiny": {"arch": "llama", "vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4,
                       "n_kv_heads": 2, "n_layers": 2, "hidden_dim": 176},
    }  # fmt: skip
    hub_names = {
        "llama2-7b": "meta-llama/Llama-2-7b-hf", "llama3-8b": "meta-llama/Meta-Llama-3-8B",
        "llama3.1-8b": "meta-llama/Llama-3.1-8B", "llama3.2-1b": "meta-llama/Llama-3.2-1B",
        "llama3.2-3b": "meta-llama/Llama-3.2-3B", "llama3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    }  # fmt: skip

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return self.common_from_hf(hf)

    def config_to_hf(self, config) -> dict[str, Any]:
        return self.common_to_hf(config)


FAMILY = Llama()
