"""Models: the book's attention progression, and GPT-2 / Llama built on one shared transformer.

    from scratchllm.models import build_model
    model = build_model("gpt2-small")           # or "llama3.2-1b", a YAML/JSON file, or a ModelConfig

`Transformer` and `build_model` are imported on first use, so reading configs never loads torch.
"""

from __future__ import annotations

from typing import Any

from scratchllm.models.config import ModelConfig, get_config, list_presets


def build_model(spec: str | ModelConfig, **overrides: Any):
    """A randomly initialised model from a preset name, a config file or a `ModelConfig`."""
    from scratchllm.models.transformer import Transformer

    return Transformer(get_config(spec, **overrides))


def __getattr__(name: str):
    if name == "Transformer":
        from scratchllm.models.transformer import Transformer

        return Transformer
    raise AttributeError(name)


__all__ = ["ModelConfig", "Transformer", "build_model", "get_config", "list_presets"]
