"""LoRA (appendix E): the book's parameter counts, identity at initialisation, merge equality, names kept."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models import build_model
from scratchllm.models.lora import LoRAConfig, LoRALinear, apply_lora, lora_state_dict, merge_lora, merged_state_dict


def test_book_parameter_counts():
    """Appendix E: GPT-2 124M classifier, rank 16, every Linear incl. the new 2-class head: 2,666,528;
    ch. 7's GPT-2 medium with rank 16 on every Linear incl. the output head: 7,898,384."""
    from scratchllm.models.classifier import SequenceClassifier

    with torch.device("meta"):
        classifier = SequenceClassifier(build_model("gpt2-small"), 2)
        medium = build_model("gpt2-medium")
    assert apply_lora(classifier, LoRAConfig(rank=16, alpha=16)) == 2_666_528
    assert apply_lora(medium, LoRAConfig(rank=16, alpha=16)) == 7_898_384
    assert all(not p.requires_grad for n, p in medium.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_identity_at_init_merge_and_names(preset):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    base_names = set(model.state_dict())
    idx = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        base = model(idx)
        apply_lora(model, LoRAConfig(rank=4, alpha=8))
        assert torch.equal(model(idx), base)  # B = 0
        assert isinstance(model.blocks[0].attn.qkv, LoRALinear) and model.blocks[0].attn.qkv.splits[0] > 0
        assert base_names <= set(model.state_dict())  # base names kept
        assert set(model.state_dict()) - base_names == set(lora_state_dict(model))
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)  # as after training
        unmerged = model(idx)
        assert (unmerged - base).abs().max() > 1e-3
        merged_sd = merged_state_dict(model)
        assert set(merged_sd) == base_names
        fresh = build_model(preset).eval()
        fresh.load_state_dict(merged_sd)
        torch.testing.assert_close(fresh(idx), unmerged, atol=1e-5, rtol=0)
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)


def test_targets_and_tied_head():
    model = build_model("gpt-tiny", tie_embeddings=True)
    n = apply_lora(model, LoRAConfig(rank=2, targets=("qkv",)))
    assert n == 2 * (3 * 2 * 64 + 192 * 2)  # two layers of rank 2: A (3 slices x 2, 64) + B (192, 2)
    assert model.is_tied  # the head was not adapted: still tied
    tied = build_model("gpt-tiny", tie_embeddings=True)
    apply_lora(tied, LoRAConfig(rank=2))
    assert not tied.is_tied and not tied.config.tie_embeddings  # an adapted head gets its own copy
    with pytest.raises(ScratchLLMError, match="lora target"):
        LoRAConfig(targets=("wq",))
    with pytest.raises(ScratchLLMError, match="rank"):
        LoRAConfig(rank=0)
