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
    from scratchllm.models.lora import expert_adapters, lora_layers

    layers, stacked = lora_layers(model), expert_adapters(model)
    if not layers and not stacked:
        raise ScratchLLMError("PEFT export: the model has no LoRA adapters")
    family = model.config.family
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas, targets, parameters = {}, {}, {}, [], []
    first = next(iter(layers.values())) if layers else next(iter(stacked.values()))[2]
    rank, alpha = first.rank, first.scaling * first.rank
    for name, layer in layers.items():
        pieces = family.peft_modules(name, layer.lora_A.detach(), layer.lora_B.detach(), layer.rank, layer.splits)
        for module, a, b, r in pieces:
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
            targets.append(module)
            if r != rank:
                ranks[module], alphas[module] = r, layer.scaling * r
    # Expert stacks: PEFT wraps a module once per target parameter, the first named innermost (`base_layer.`),
    # and stores expert e's A as rows e*r..(e+1)*r of one (experts*r, in) matrix and its B as columns
    # e, e+E, ... of one (out, r*experts) matrix.
    for key, (_, _, adapter) in stacked.items():
        module, parameter, inner = family.peft_expert_parameter(key)
        a = adapter.lora_A.detach()
        b = adapter.lora_B.detach()
        prefix = f"base_model.model.{module}." + ("base_layer." if inner else "")
        tensors[prefix + "lora_A.weight"] = a.reshape(-1, a.shape[-1]).contiguous()
        tensors[prefix + "lora_B.weight"] = b.permute(1, 2, 0).reshape(b.shape[1], -1).contiguous()
        if parameter not in parameters:
            parameters.append(parameter)
    save_tensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name, "r": rank,
        "lora_alpha": alpha, "lora_dropout": float(getattr(getattr(first, "lora_dropout", None), "p", 0.0)),
        "target_modules": targets, "target_parameters": parameters or None, "rank_pattern": ranks,
        "alpha_pattern": alphas, "fan_in_fan_out": family.peft_fan_in_fan_out, "bias": "none", "inference_mode": True,
    }  # fmt: skip
    text = json.dumps(config, indent=2)
    atomic_write(out / "adapter_config.json", lambda tmp: tmp.write_text(text))
    return out
