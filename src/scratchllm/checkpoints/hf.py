"""Translating between our models and HuggingFace `transformers`' folders, through the model's family.

Both directions are pure functions on state dicts and config dicts, so the parity tests, checkpoint
loading and `scratchllm convert` share one mapping. Which config keys and tensor names a family uses lives
in its family file (`models/families/`); this module picks the family and builds the `ModelConfig`.
"""

from __future__ import annotations

from typing import Any

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import ModelConfig
from scratchllm.models.families import family_for_hf

Tensors = dict[str, torch.Tensor]


def config_from_hf(hf: dict[str, Any], name: str = "hf-model") -> ModelConfig:
    """A `config.json` of any supported family -> `ModelConfig`."""
    if not isinstance(hf, dict):
        raise ScratchLLMError("config.json: expected a JSON object of config fields")
    family = family_for_hf(hf)
    try:
        fields = family.config_from_hf(hf)
    except KeyError as e:
        raise ScratchLLMError(f"config.json: missing field {e.args[0]!r} for model_type {hf['model_type']!r}") from None
    return ModelConfig(name=name, arch=family.name, **fields)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """`ModelConfig` -> a `config.json` dict that `transformers.AutoConfig` reads."""
    return config.family.config_to_hf(config)


def state_dict_from_hf(sd: Tensors, config: ModelConfig) -> Tensors:
    """HF tensors (a file's or a transformers model's state dict) -> our `Transformer` state dict."""
    return config.family.tensors_from_hf(sd, config)


def state_dict_to_hf(sd: Tensors, config: ModelConfig) -> Tensors:
    """Our `Transformer` state dict -> HF tensors as its files hold them (contiguous, untied)."""
    return config.family.tensors_to_hf(sd, config)
