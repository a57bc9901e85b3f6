"""LoRA export: the unmerged adapter in PEFT's format (peft loads it onto the transformers base model and gives
our logits) and the merged weights as a HuggingFace folder (transformers loads it, same logits)."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers

from scratchllm.checkpoints.convert import to_hf
from scratchllm.checkpoints.peft import export_peft
from scratchllm.models import build_model
from scratchllm.models.lora import LoRAConfig, apply_lora, merge_lora


@pytest.mark.parametrize("preset,targets", [("gpt-tiny", ("all",)), ("llama-tiny", ("all",)),
                                            ("gpt-tiny", ("qkv", "fc2")), ("qwen3-tiny", ("all",)),
                                            ("qwen3-moe-tiny", ("all",)), ("gemma3-tiny", ("all",)),
                                            ("olmo3-tiny", ("all",))])  # fmt: skip
def test_peft_adapter_and_merged_export_give_our_logits(preset, targets, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=300, tie_embeddings=True).eval()
    to_hf(model, None, tmp_path / "base")  # the base model, before the adapters
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)  # as after training
        idx = torch.randint(0, 300, (2, 12))
        ours = model(idx)
        export_peft(model, tmp_path / "adapter")
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
        plain = base(idx).logits
        assert (plain - ours).abs().max() > 1e-3  # the adapters matter
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        torch.testing.assert_close(adapted(idx).logits, ours, atol=1e-5, rtol=1e-4)
        to_hf(merge_lora(model), None, tmp_path / "merged")
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(idx).logits, ours, atol=1e-5, rtol=1e-4)
