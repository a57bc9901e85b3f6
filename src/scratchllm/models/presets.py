"""Named model configurations, as plain data: `get_config("gpt2-small")`, `scratchllm info` lists them.

Each entry holds the `ModelConfig` fields that differ from the defaults; components (norm, mlp, positions,
bias) follow `arch` unless an entry sets them. Nothing here imports the model code, so reading a config never
loads torch and the models package has no import cycle.
"""

from __future__ import annotations

from typing import Any

# OpenAI's released GPT-2 weights use qkv biases and tie the output head to the token embedding.
_GPT2 = {"arch": "gpt2", "vocab_size": 50257, "context_length": 1024, "qkv_bias": True, "tie_embeddings": True}
# Llama 3 models share the 128k tiktoken vocabulary, 8 key/value heads and RoPE base 500,000; 3.1 and 3.2
# stretch the 8k pretraining context to 128k by RoPE frequency scaling (factor 8 for 8B, 32 for 1B/3B).
_LLAMA3 = {"arch": "llama", "vocab_size": 128256, "n_kv_heads": 8, "rope_base": 500000.0}


def _long(factor: float) -> dict[str, Any]:
    return {"context_length": 131072, "rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_context_length": 8192}}  # fmt: skip


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": {**_GPT2, "emb_dim": 768, "n_heads": 12, "n_layers": 12},
    "gpt2-medium": {**_GPT2, "emb_dim": 1024, "n_heads": 16, "n_layers": 24},
    "gpt2-large": {**_GPT2, "emb_dim": 1280, "n_heads": 20, "n_layers": 36},
    "gpt2-xl": {**_GPT2, "emb_dim": 1600, "n_heads": 25, "n_layers": 48},
    # The book's GPT_CONFIG_124M: no qkv bias, dropout 0.1, untied head (163,009,536 parameters).
    "gpt2-124m-book": {**_GPT2, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "qkv_bias": False, "drop_rate": 0.1,
                       "tie_embeddings": False},
    # Small models that train on a 2-core CPU in minutes; gpt-demo is the default run's model, gpt-tiny for tests.
    "gpt-demo": {"arch": "gpt2", "vocab_size": 8192, "context_length": 256, "emb_dim": 256, "n_heads": 8,
                 "n_layers": 6, "tie_embeddings": True},
    "gpt-tiny": {"arch": "gpt2", "vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
                 "qkv_bias": True},
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
