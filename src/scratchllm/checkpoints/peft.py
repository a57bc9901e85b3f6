"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, for the HF base model.

`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), FOLDER)` then computes what our
LoRA model computes (tests hold the logits equal). Mapping our layers to HF's modules:
- GPT-2: `attn.qkv` -> the fused `attn.c_attn`. Our three per-slice adapters (q, k, v) become one adapter of
  rank 3r whose B is block-diagonal; its alpha is 3 x alpha so PEFT's scaling alpha / rank stays alpha / r
  (`rank_pattern` / `alpha_pattern`). `attn.proj` -> `attn.c_proj`, `ff.fc1` -> `mlp.c_fc`, `ff.fc2` ->
  `mlp.c_proj` (Conv1D layers: `fan_in_fan_out`), `out_head` -> `lm_head`.
- Llama: `attn.qkv` -> `self_attn.q_proj` / `k_proj` / `v_proj`, one adapter each; `attn.proj` -> `o_proj`,
  `ff.gate/up/down` -> `mlp.gate_proj/up_proj/down_proj`, `out_head` -> `lm_head`.
Target modules are listed by full name, so adapting `ff.fc2` never adapts `attn.c_proj` by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchllm.checkpoints.io import save_tensors
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write

GPT2_NAMES = {"attn.proj": "attn.c_proj", "ff.fc1": "mlp.c_fc", "ff.fc2": "mlp.c_proj"}
LLAMA_NAMES = {"attn.proj": "self_attn.o_proj", "ff.gate": "mlp.gate_proj", "ff.up": "mlp.up_proj",
               "ff.down": "mlp.down_proj"}  # fmt: skip


def _hf_adapters(name: str, layer, arch: str) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(HF module, A, B, rank) for one of our LoRA layers."""
    a, b, r = layer.lora_A.detach(), layer.lora_B.detach(), layer.rank
    if name == "out_head":
        return [("lm_head", a, b, r)]
    if not name.startswith("blocks."):
        raise ScratchLLMError(f"PEFT export: no HuggingFace module for LoRA layer {name!r}")
    i, rest = name.split(".", 2)[1:]
    if arch == "gpt2":
        prefix = f"transformer.h.{i}."
        if rest == "attn.qkv":
            block_b = torch.zeros(b.shape[0], len(layer.splits) * r, dtype=b.dtype)
            row = 0
            for s, size in enumerate(layer.splits):
                block_b[row : row + size, s * r : (s + 1) * r] = b[row : row + size]
                row += size
            return [(prefix + "attn.c_attn", a, block_b, len(layer.splits) * r)]
        return [(prefix + GPT2_NAMES[rest], a, b, r)]
    prefix = f"model.layers.{i}."
    if rest == "attn.qkv":
        rows = b.split(layer.splits)
        return [(f"{prefix}self_attn.{n}_proj", a[s * r : (s + 1) * r], rows[s], r) for s, n in enumerate("qkv")]
    return [(prefix + LLAMA_NAMES[rest], a, b, r)]


def export_peft(model, out_dir: str | Path, base_name: str = "") -> Path:
    """Write `model`'s LoRA adapters (unmerged) as a PEFT folder for the HuggingFace export of its base."""
    from scratchllm.models.lora import lora_layers

    layers = lora_layers(model)
    if not layers:
        raise ScratchLLMError("PEFT export: the model has no LoRA adapters")
    arch = model.config.arch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas, targets = {}, {}, {}, []
    first = next(iter(layers.values()))
    rank, alpha = first.rank, first.scaling * first.rank
    for name, layer in layers.items():
        for module, a, b, r in _hf_adapters(name, layer, arch):
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
            targets.append(module)
            if r != rank:
                ranks[module], alphas[module] = r, layer.scaling * r
    save_tensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name, "r": rank,
        "lora_alpha": alpha, "lora_dropout": float(getattr(first.lora_dropout, "p", 0.0)), "target_modules": targets,
        "rank_pattern": ranks, "alpha_pattern": alphas, "fan_in_fan_out": arch == "gpt2", "bias": "none",
        "inference_mode": True,
    }  # fmt: skip
    text = json.dumps(config, indent=2)
    atomic_write(out / "adapter_config.json", lambda tmp: tmp.write_text(text))
    return out
