"""LoRA (book appendix E): a frozen Linear plus a trainable low-rank update, applied through `rewrite_linears`.

    y = x W^T + b + dropout(x) A^T B^T * (alpha / rank)        A: (rank, in), B: (out, rank)

Decisions:
- `LoRALinear` is an `nn.Linear` holding the base layer's own Parameters, so the base keeps its names
  (`blocks.0.attn.qkv.weight` loads as before) and the adapter adds `lora_A` / `lora_B` beside them.
- B starts at zero (A Kaiming-uniform, as the book): at initialisation the model is exactly the base model.
- Scaling is alpha / rank, as the LoRA paper, PEFT, litgpt and the book's current appendix-E notebook. The
  printed appendix E (and exercise 7.4, which reuses it) scales by alpha alone: its rank 16, alpha 16 is an
  update 16 times ours at rank 16, alpha 16. Our alpha = book alpha x rank reproduces it exactly (rank 16,
  alpha 256), which is what the book's recipe configs set.
- The fused qkv projection gets one adapter per slice (q, k, v: `splits`), i.e. the book's three separate
  adapters on W_query, W_key, W_value: the same parameter count (the book's 2,666,528 for its GPT-2
  classifier), and per-head-group updates stay independent. Exported to PEFT, HF GPT-2's fused `c_attn`
  takes them as one rank-3r adapter (block-diagonal B), Llama's q/k/v_proj as three.
- A head tied to the embedding gets its own copy when it is adapted (the book's GPTModel has one anyway).
- A mixture of experts' experts are stacked Parameters, not Linear layers: "all" adapts its attention and
  head; the target "experts" adds a `StackedLoRA` per stacked weight (one A and B per expert), applied by the
  same grouped products as the experts (PEFT's `target_parameters` on transformers' expert stacks).
- Only the adapters train: `apply_lora` freezes every other parameter. `merge_lora` folds the update into
  the weights for export or fast inference; `merged_state_dict` is what every saved model holds and
  `checkpoint_tensors` what a training checkpoint holds (adapters alone for an adapted model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.models.linear import rewrite_linears

# Target names (the last part of a Linear's qualified name; "all" is every Linear) and "experts": a mixture
# of experts' stacked expert weights, adapted only when named (`all,experts`), as PEFT's target_parameters.
TARGETS = ("qkv", "proj", "fc1", "fc2", "gate", "up", "down", "out_head", "head", "experts")


@dataclass
class LoRAConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("all",)  # "all" = every Linear, the output head included (as the book)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ScratchLLMError(f"lora rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ScratchLLMError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ScratchLLMError(f"lora dropout must be in [0, 1), got {self.dropout}")
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t != "all" and t not in TARGETS]
        if unknown:
            raise ScratchLLMError(f"lora target {unknown[0]!r}: expected 'all' or some of {', '.join(TARGETS)}")
        if "experts" in self.targets and self.dropout > 0:  # x cannot be factored out of a per-expert product
            raise ScratchLLMError("lora target 'experts' takes no dropout (as PEFT's expert adapters); set it to 0")

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class LoRALinear(nn.Linear):
    """A frozen Linear (its own Parameters, its own names) plus `lora_A` / `lora_B` per output slice."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig, splits: tuple[int, ...] | None = None):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names and ties unchanged
        self.splits = tuple(splits or (base.out_features,))
        if sum(self.splits) != base.out_features:
            raise ValueError(f"splits {self.splits} do not add up to {base.out_features} outputs")
        self.rank, self.scaling = cfg.rank, cfg.alpha / cfg.rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(len(self.splits) * cfg.rank, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, cfg.rank, **kw))
        for a in self.lora_A.data.split(cfg.rank):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # Dropout(p=0) in training mode still copies its input and saves a mask for every layer: skip it.
        self.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.enabled = True  # off: the base layer alone (DPO's reference model, without a second copy)

    def b_matrix(self) -> torch.Tensor:
        """(out, slices * rank): each slice's B on the diagonal, so one product applies every slice's adapter."""
        if len(self.splits) == 1:
            return self.lora_B
        return torch.block_diag(*self.lora_B.split(self.splits))

    def delta_weight(self) -> torch.Tensor:
        """(out, in) update B A * scaling (slice s: B_s A_s)."""
        return self.b_matrix() @ self.lora_A * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """W + B A * scaling: the one merge formula (export, merging, and the fused head + loss use it)."""
        return self.weight + self.delta_weight().to(self.weight.dtype)

    @property
    def effective_weight(self) -> torch.Tensor:
        """The merged weight, differentiable in the adapters: lets the fused head + loss train an adapted head
        without materialising every logit."""
        return self.merged_weight() if self.enabled else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        z = F.linear(self.lora_dropout(x), self.lora_A)  # (..., slices * rank)
        # In place: the base product's output is not needed by its backward, and an (out)-sized temporary per
        # layer less is measurable on CPU (memory is reused, not returned).
        return y.add_(F.linear(z, self.b_matrix()), alpha=self.scaling)


class StackedLoRA(nn.Module):
    """Adapters for a stack of expert weights W (experts, out, in): expert e's update is B_e A_e * scaling.

    The mixture of experts applies it to the rows routed to each expert with the same grouped products as W
    (`grouped`, or `gathered` under torch.compile): two thin products of width `rank`, never a weight-sized
    delta, so adapting the experts costs little memory on top of the frozen stack.
    """

    def __init__(self, weight: nn.Parameter, cfg: LoRAConfig):
        super().__init__()
        experts, out, inputs = weight.shape
        self.rank, self.scaling, self.enabled = cfg.rank, cfg.alpha / cfg.rank, True
        kw = {"device": weight.device, "dtype": weight.dtype}
        bound = 1 / math.sqrt(inputs)  # nn.init.kaiming_uniform_(a=sqrt(5)) of each expert's (rank, in) A
        self.lora_A = nn.Parameter(torch.empty(experts, cfg.rank, inputs, **kw).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(experts, out, cfg.rank, **kw))

    def grouped(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        z = F.grouped_mm(x, self.lora_A.transpose(1, 2), offs=ends)
        return F.grouped_mm(z, self.lora_B.transpose(1, 2), offs=ends) * self.scaling

    def gathered(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(x, self.lora_A[experts].transpose(1, 2))
        return torch.bmm(z, self.lora_B[experts].transpose(1, 2)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return torch.bmm(self.lora_B, self.lora_A) * self.scaling

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The stack `weight` with every expert's update folded in (export and merging)."""
        return weight + self.delta_weight().to(weight.dtype)


# The stacked expert weights a mixture of experts holds, and the attribute of each one's adapter.
EXPERT_WEIGHTS = {"gate_up": "lora_gate_up", "down": "lora_down"}


def _qkv_splits(model: nn.Module) -> dict[str, tuple[int, ...]]:
    from scratchllm.models.attention import CausalSelfAttention

    return {f"{name}.qkv": (m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim, m.n_kv_heads * m.head_dim)
            for name, m in model.named_modules() if isinstance(m, CausalSelfAttention)}  # fmt: skip


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Freeze `model` and add LoRA adapters to the target Linear layers; returns the trainable parameter count."""
    splits = _qkv_splits(model)
    unused = set(getattr(model, "unused_linears", ()))

    def wanted(name: str) -> bool:
        # A mixture of experts' router (a few outputs that pick experts) is never adapted, as in PEFT's presets.
        last = name.rsplit(".", 1)[-1]
        return name not in unused and last != "router" and ("all" in cfg.targets or last in cfg.targets)

    for name, layer in model.named_modules():  # checked before anything changes
        if isinstance(layer, nn.Linear) and wanted(name):
            # A rank above both sides of a weight adds nothing but memory (the book's rank 16 on a 2-class
            # head is above one side and fine); a typo like 100000 would exhaust memory.
            largest = max(layer.in_features, *(splits.get(name) or (layer.out_features,)))
            if cfg.rank > largest:
                raise ScratchLLMError(f"lora rank {cfg.rank} exceeds both sides of layer {name} (in "
                                      f"{layer.in_features}, out {layer.out_features}); use a rank <= {largest}")
    if getattr(model, "is_tied", False) and wanted("out_head"):
        # An adapted head is no longer the embedding: give it its own copy (as the book's GPTModel has), so
        # merging the update never changes the embedding.
        import dataclasses

        model.out_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())
        model.config = dataclasses.replace(model.config, tie_embeddings=False)
    from scratchllm.models.moe import MoEFeedForward

    moes = [m for m in model.modules() if isinstance(m, MoEFeedForward)] if "experts" in cfg.targets else []
    if "experts" in cfg.targets and not moes:
        raise ScratchLLMError("lora target 'experts': this model has no mixture of experts")
    for p in model.parameters():
        p.requires_grad_(False)
    n = rewrite_linears(model, lambda name, layer: LoRALinear(layer, cfg, splits.get(name)), only=wanted)
    for moe in moes:
        for weight, attr in EXPERT_WEIGHTS.items():
            setattr(moe, attr, StackedLoRA(getattr(moe, weight), cfg))
    if n == 0 and not moes:
        raise ScratchLLMError(f"lora targets {cfg.targets}: no Linear layer of this model matches")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def expert_adapters(model: nn.Module) -> dict[str, tuple[nn.Module, str, StackedLoRA]]:
    """"NAME.WEIGHT" -> (the mixture of experts, its stacked weight's name, that weight's adapter)."""
    return {f"{name}.{weight}": (m, weight, getattr(m, attr)) for name, m in model.named_modules()
            for weight, attr in EXPERT_WEIGHTS.items() if isinstance(getattr(m, attr, None), StackedLoRA)}  # fmt: skip


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, (LoRALinear, StackedLoRA)) for m in model.modules())


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in [*lora_layers(model).values(), *(a for _, _, a in expert_adapters(model).values())]:
        layer.enabled = enabled


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


# How an adapted model is saved and resumed is decided here, for every caller: a model's weights on disk
# (run folders, HF and GGUF exports) are always merged; a training checkpoint of an adapted model holds its
# adapters alone, since resuming rebuilds the frozen base from --checkpoint.


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a training checkpoint of `model` holds: an adapted model's adapters, any other model's state."""
    return lora_state_dict(model) if has_lora(model) else model.state_dict()


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as saved: every adapter folded into its base weight (the model itself unchanged;
    a model without adapters gives its plain state dict)."""
    out = {k: v for k, v in model.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}
    for name, layer in lora_layers(model).items():
        out[f"{name}.weight"] = layer.merged_weight()
    for key, (moe, weight, adapter) in expert_adapters(model).items():
        out[key] = adapter.merged_weight(getattr(moe, weight))
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by a plain Linear with the update folded in, in place."""

    def merged(name: str, layer: nn.Module) -> nn.Module:
        if not isinstance(layer, LoRALinear):
            return layer
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=layer.weight.device, dtype=layer.weight.dtype)  # fmt: skip
        plain.weight.copy_(layer.merged_weight())
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        return plain

    rewrite_linears(model, merged)
    for moe, weight, adapter in expert_adapters(model).values():
        getattr(moe, weight).copy_(adapter.merged_weight(getattr(moe, weight)))
        setattr(moe, EXPERT_WEIGHTS[weight], None)
    return model
