"""The model families scratchllm speaks, one file each: everything that differs between them lives there.

To add a family: write `models/families/NAME.py` with a `Family` subclass (its components, presets, hub
names, HuggingFace config keys and tensor names both ways, PEFT module names, chat style), add it to
`FAMILIES` below, and give any new component a `ModelConfig` field read by the shared model code.
"""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError
from scratchllm.models.families import gemma3, gpt2, llama, olmo3, qwen3
from scratchllm.models.families.base import Family

FAMILIES: dict[str, Family] = {
    f.name: f for f in (gpt2.FAMILY, llama.FAMILY, qwen3.FAMILY, qwen3.MOE_FAMILY, gemma3.FAMILY, olmo3.FAMILY)
}
PRESETS = {name: preset for f in FAMILIES.values() for name, preset in f.presets.items()}
HUB_NAMES = {name: repo for f in FAMILIES.values() for name, repo in f.hub_names.items()}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ScratchLLMError(f"unknown model family {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_hf(hf: dict) -> Family:
    """The family that reads a HuggingFace config.json (by its `model_type`)."""
    kind = hf.get("model_type")
    for family in FAMILIES.values():
        if kind in family.hf_model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.hf_model_types)
    raise ScratchLLMError(f"config.json: model_type {kind!r} is not supported (expected one of {', '.join(known)})")
