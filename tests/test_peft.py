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
                                            ("qwen3-moe-tiny", ("all",)), ("qwen3-moe-tiny", ("experts",)),
                                            ("qwen3-moe-tiny", ("qkv", "experts")), ("gemma3-tiny", ("all",)),
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


def test_expert_adapters_train_as_peft_trains_them(tmp_path):
    """LoRA on a mixture of experts' stacked weights (`--lora-targets ...,experts`): the loss's gradients reach
    every expert's A and B as they reach PEFT's expert adapters (`target_parameters`) on transformers' model, and
    the gathered path (compiled decoding) computes what the grouped one does."""
    torch.manual_seed(0)
    model = build_model("qwen3-moe-tiny", vocab_size=300)
    to_hf(model, None, tmp_path / "base")
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=("experts",)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    export_peft(model, tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter", is_trainable=True)
    idx = torch.randint(0, 300, (2, 12))
    loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    logits = theirs(idx[:, :-1]).logits
    their_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    torch.testing.assert_close(their_loss, loss, atol=1e-5, rtol=1e-5)
    their_loss.backward()
    experts = theirs.base_model.model.model.layers[0].mlp.experts  # down_proj's wrapper around gate_up_proj's
    adapter = model.blocks[0].ff.lora_down
    e, r = adapter.lora_A.shape[:2]
    torch.testing.assert_close(experts.lora_A["default"].weight.grad, adapter.lora_A.grad.reshape(e * r, -1),
                               atol=1e-6, rtol=1e-4)  # fmt: skip
    inner = experts.base_layer
    torch.testing.assert_close(inner.lora_B["default"].weight.grad,
                               model.blocks[0].ff.lora_gate_up.lora_B.grad.permute(1, 2, 0).reshape(-1, e * r),
                               atol=1e-6, rtol=1e-4)  # fmt: skip
    ff, x = model.blocks[0].ff, torch.randn(16, model.config.emb_dim)
    with torch.no_grad():
        _, weights, chosen = ff.route(x)
        torch.testing.assert_close(ff._gathered(x, weights, chosen), ff._grouped(x, weights, chosen),
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
