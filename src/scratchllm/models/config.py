"""Model configuration: one dataclass for every family, named presets, YAML/JSON files.

Field names follow the book (`vocab_size`, `context_length`, `emb_dim`, `n_heads`, `n_layers`,
`drop_rate`, `qkv_bias`) so a reader can map them one to one; the fields later families need (`n_kv_heads`,
`head_dim`, `hidden_dim`, `rope_base`, `rope_scaling`, the expert counts) are added beside them. The pieces
that differ between families are component fields, each filled in from the family (`arch`) unless given:

| arch      | norm           | norm_placement | mlp                   | positions | bias            | qk_norm |
| gpt2      | layernorm      | pre            | gelu (tanh), d->4d->d | learned   | yes (qkv: flag) | none    |
| llama     | rmsnorm        | pre            | swiglu, d->hidden->d  | rope      | none            | none    |
| qwen3     | rmsnorm        | pre            | swiglu                | rope      | none            | head    |
| qwen3_moe | rmsnorm        | pre            | moe (swiglu experts)  | rope      | none            | head    |
| gemma3    | rmsnorm_offset | sandwich       | geglu                 | rope      | none            | head    |
| olmo3     | rmsnorm        | post           | swiglu                | rope      | none            | full    |
(Gemma 3 also scales its embeddings by sqrt(emb_dim); sliding windows are fields of their own.)

The model code reads only the components, never `arch`; `arch` names the family (`models/families/`), which
holds everything else that differs. Presets are plain data in the family files; `get_config` accepts a
preset name or a file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError, check_fields
from scratchllm.files import atomic_write
from scratchllm.models.families import FAMILIES, PRESETS, get_family

CHOICES = {"norm": ("layernorm", "rmsnorm", "rmsnorm_offset"), "mlp": ("gelu", "swiglu", "geglu", "moe"),
           "positions": ("learned", "rope"), "qk_norm": ("none", "head", "full"),
           "norm_placement": ("pre", "sandwich", "post")}  # fmt: skip
# Defaults of the component fields for a family that does not name them.
BASE_COMPONENTS = {"qk_norm": "none", "norm_placement": "pre", "scale_embeddings": False}


@dataclass
class ModelConfig:
    name: str = "custom"
    arch: str = "gpt2"
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    n_kv_heads: int | None = None  # None = n_heads (multi-head); 1 = multi-query; between = grouped-query
    head_dim: int | None = None  # None = emb_dim // n_heads
    hidden_dim: int | None = None  # feed-forward width; None = 4 * emb_dim (GPT-2)
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama 3.1/3.2: factor, low/high_freq_factor, original context
    # sliding-window attention: local layers attend to the last `sliding_window` positions only (their KV cache
    # holds no more); with `global_every` n, every n-th layer is global (Gemma 3: 6, Olmo 3: 4), else all local
    sliding_window: int | None = None
    global_every: int | None = None
    rope_local_base: float | None = None  # RoPE base of the local layers (Gemma 3: 10,000); None = rope_base
    attn_scale: float | None = None  # softmax scale of the attention scores; None = 1 / sqrt(head_dim)
    # mixture of experts (mlp: moe): each token's feed-forward is the weighted sum of n_experts_active of
    # n_experts SwiGLU experts of width expert_hidden_dim, chosen by a router
    n_experts: int = 0
    n_experts_active: int = 0
    expert_hidden_dim: int | None = None
    norm_topk: bool = True  # renormalise the chosen experts' router weights to sum to 1 (Qwen3-MoE)
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss added in training
    # components (None = the family's own, see the family file)
    norm: str | None = None
    mlp: str | None = None
    positions: str | None = None
    bias: bool | None = None  # biases on the output projection, feed-forward and norms
    qk_norm: str | None = None  # "head": norm over each query/key head before RoPE (Qwen3, Gemma 3); "full": over
    # all query / all key features (Olmo)
    norm_placement: str | None = None  # "pre": x + f(norm(x)); "sandwich": x + norm(f(norm(x))) (Gemma);
    # "post": x + norm(f(x)) (Olmo)
    scale_embeddings: bool | None = None  # token embeddings times sqrt(emb_dim) (Gemma)
    # Which of the derived fields were filled in from the others, so `replace` re-derives them.
    _derived: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self, f"model config {self.name!r}")
        derivable = ("n_kv_heads", "head_dim", "hidden_dim", "expert_hidden_dim", *CHOICES, "bias", "scale_embeddings")
        self._derived = frozenset(n for n in derivable if getattr(self, n) is None)
        if self.arch not in FAMILIES:
            raise ScratchLLMError(f"config {self.name!r}: field 'arch' is {self.arch!r}, expected one of "
                                  f"{tuple(FAMILIES)}")  # fmt: skip
        for name, value in {**BASE_COMPONENTS, **get_family(self.arch).components}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ScratchLLMError(f"config {self.name!r}: field {name!r} is {getattr(self, name)!r}, "
                                      f"expected one of {allowed}")  # fmt: skip
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.emb_dim % self.n_heads:
                raise ScratchLLMError(
                    f"config {self.name!r}: emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}"
                )
            self.head_dim = self.emb_dim // self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = 4 * self.emb_dim
        if self.n_heads % self.n_kv_heads:
            raise ScratchLLMError(
                f"config {self.name!r}: n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ScratchLLMError(f"config {self.name!r}: RoPE needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) < 1:
                raise ScratchLLMError(f"config {self.name!r}: field {name!r} must be >= 1")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ScratchLLMError(f"config {self.name!r}: field 'sliding_window' must be >= 1")
        if self.global_every is not None and self.global_every < 1:
            raise ScratchLLMError(f"config {self.name!r}: field 'global_every' must be >= 1")
        if self.mlp == "moe":
            if self.expert_hidden_dim is None:
                self.expert_hidden_dim = self.hidden_dim
            if not 1 <= self.n_experts_active <= self.n_experts:
                raise ScratchLLMError(f"config {self.name!r}: mlp 'moe' needs 1 <= n_experts_active "
                                      f"({self.n_experts_active}) <= n_experts ({self.n_experts})")  # fmt: skip

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def uses_rope(self) -> bool:
        return self.positions == "rope"

    def window(self, layer: int) -> int | None:
        """The attention window of `layer`: None for a global layer (every layer without sliding windows)."""
        if self.sliding_window is None or (self.global_every and (layer + 1) % self.global_every == 0):
            return None
        return self.sliding_window

    @property
    def family(self):
        """The `models.families.Family` that knows this model's files, names and chat style."""
        return get_family(self.arch)

    # -- files ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes`; derived widths follow changed dimensions unless given explicitly."""
        base = {k: (None if k in self._derived else v) for k, v in self.to_dict().items()}
        return from_dict({**base, **changes})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2)
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path


def from_dict(data: dict[str, Any], where: str = "config") -> ModelConfig:
    if not isinstance(data, dict):
        raise ScratchLLMError(f"{where}: expected a mapping of config fields")
    known = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScratchLLMError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return ModelConfig(**data)
    except TypeError as e:
        raise ScratchLLMError(f"{where}: {e}") from None


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScratchLLMError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both mean a malformed file
        raise ScratchLLMError(f"{path}: malformed config ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]  # a training config file with a `model:` section
    return from_dict(data, str(path))


def get_config(spec: str | Path | ModelConfig, **overrides: Any) -> ModelConfig:
    """A preset name (see `list_presets()`), a YAML/JSON file, or a config; `overrides` replace fields."""
    if isinstance(spec, ModelConfig):
        config = spec
    else:
        if str(spec) in PRESETS:
            config = from_dict({"name": str(spec), **PRESETS[str(spec)]}, f"preset {spec!r}")
        elif Path(spec).is_file():
            config = load_config(spec)
        else:
            raise ScratchLLMError(f"unknown model {spec!r}: not a preset ({', '.join(list_presets())}) nor a file")
    return config.replace(**overrides)  # a fresh copy that keeps which fields were derived


def list_presets() -> list[str]:
    return list(PRESETS)
