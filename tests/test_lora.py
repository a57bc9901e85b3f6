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


class BookLoRALayer(torch.nn.Module):
    """The printed book's LoRALayer (appendix E), written from its formula: alpha * (x @ A @ B), A (in, r)
    Kaiming-uniform, B (r, out) zeros. An independent reference for our scaling."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = torch.nn.Parameter(torch.empty(in_dim, rank))
        torch.nn.init.kaiming_uniform_(self.A, a=5**0.5)
        self.B = torch.nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha

    def forward(self, x):
        return self.alpha * (x @ self.A @ self.B)


def test_scaling_reproduces_the_books_formula():
    """Ours at alpha = book alpha x rank is the printed book's update; ours at rank = alpha is 1/rank of it."""
    import yaml

    from .conftest import ROOT

    torch.manual_seed(0)
    base = torch.nn.Linear(24, 12)
    book = BookLoRALayer(24, 12, rank=16, alpha=16)
    torch.nn.init.normal_(book.B, std=0.1)  # as after training
    x = torch.randn(5, 24)
    for alpha, factor in ((256, 1.0), (16, 1 / 16)):
        ours = LoRALinear(base, LoRAConfig(rank=16, alpha=alpha))
        with torch.no_grad():
            ours.lora_A.copy_(book.A.T)
            ours.lora_B.copy_(book.B.T)
        torch.testing.assert_close(ours(x), base(x) + factor * book(x))
    for name in ("instruct-book.yaml", "classify-sms-book.yaml"):  # the book's recipes use the book's update
        recipe = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert recipe["lora_alpha"] / recipe["lora_rank"] == book.alpha, name


def test_dropout_is_applied_to_the_adapters_input_in_training_only():
    """y = base(x) + dropout(x) A^T B^T s: the same mask torch's own dropout draws, and none in eval mode."""
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 8)
    layer = LoRALinear(base, LoRAConfig(rank=4, alpha=8, dropout=0.5))
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
    x = torch.randn(6, 32)
    update = lambda inp: inp @ layer.lora_A.T @ layer.lora_B.T * 2.0  # noqa: E731  (alpha / rank = 2)
    layer.train()
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    expected = base(x) + update(torch.nn.functional.dropout(x, 0.5, training=True))
    torch.testing.assert_close(got, expected)
    assert (got - (base(x) + update(x))).abs().max() > 1e-3  # the mask made a difference
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + update(x))


def test_an_adapted_head_learns_through_the_fused_loss():
    """LoRA on the output head: the fused head + cross-entropy gives its adapters the gradients of plain
    logits + cross-entropy (the fused loss must differentiate through the effective weight)."""
    from scratchllm.training.loss import fused_linear_cross_entropy

    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model("gpt-tiny", drop_rate=0.0)
        apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=("out_head",)))
        with torch.no_grad():
            model.out_head.lora_B.normal_(0, 0.05)
        x = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
        y = torch.roll(x, -1, dims=1)
        if fused:
            loss = fused_linear_cross_entropy(model.hidden(x), model.head_weight, y)
        else:
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        grads.append((model.out_head.lora_A.grad.clone(), model.out_head.lora_B.grad.clone()))
    for got, expected in zip(grads[0], grads[1]):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_one_adapter_switch_for_every_fine_tuning_task():
    """`lora` is the switch in every fine-tuning config; a classification config or run folder that still says
    `trainable: lora` means the same run."""
    from scratchllm.training.config import ClassifyConfig, DPOConfig, FinetuneSettings, InstructConfig

    for cls in (ClassifyConfig, InstructConfig, DPOConfig):
        assert issubclass(cls, FinetuneSettings) and cls(lora=True).lora_config().rank == 16
    old = ClassifyConfig(trainable="lora")
    assert old.lora and old.to_dict() == ClassifyConfig(lora=True).to_dict()
    with pytest.raises(ScratchLLMError, match="with lora only the adapters train"):
        ClassifyConfig(lora=True, trainable="head")  # two switches that contradict each other
