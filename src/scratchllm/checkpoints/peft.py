"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, for the HF base model.

`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), FOLDER)` then computes what our
LoRA model computes (tests hold the logits equal). The family maps each of our LoRA layers to HF modules
(`Family.peft_modules`): GPT-2's fused `c_attn` takes our three qkv slices as one rank-3r adapter with a
block-diagonal B (its alpha 3 x alpha, so PEFT's alpha / rank stays ours, via `rank_pattern` /
`alpha_pattern`); the Llama layout's separate q/k/v_proj take one adapter each.
Target modules are listed by full name, so adapting `ff.fc2` never adapts `attn.c_proj` by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.checkpoints.io import save_tensors
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write


def export_peft(model, out_dir: str | Path, base_name: str = "") -> Path:
    """Write `model`'s LoRA adapters (unmerged) as a PEFT folder for the HuggingFace export of its base."""
    from scratchllm.models.lora import lora_layers

    layers = lora_layers(model)
    if not layers:
        raise ScratchLLMError("PEFT export: the model has no LoRA adapters")
    family = model.config.family
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas, targets = {}, {}, {}, []
    first = next(iter(layers.values()))
    rank, alpha = first.rank, first.scaling * first.rank
    for name, layer in layers.items():
        pieces = family.peft_modules(name, layer.lora_A.detach(), layer.lora_B.detach(), layer.rank, layer.splits)
        for module, a, b, r in pieces:
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
            targets.append(module)
            if r != rank:
                ranks[module], alphas[module] = r, layer.scaling * r
    save_tensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name, "r": rank,
        "lora_alpha": alpha, "lora_dropout": float(getattr(first.lora_dropout, "p", 0.0)), "target_modules": targets,
        "rank_pattern": ranks, "alpha_pattern": alphas, "fan_in_fan_out": family.peft_fan_in_fan_out, "bias": "none",
        "inference_mode": True,
    }  # fmt: skip
    text = json.dumps(config, indent=2)
    atomic_write(out / "adapter_config.json", lambda tmp: tmp.write_text(text))
    return out
