"""Model configuration: one dataclass for both architectures, named presets, YAML/JSON files.

Field names follow the book (`vocab_size`, `context_length`, `emb_dim`, `n_heads`, `n_layers`,
`drop_rate`, `qkv_bias`) so a reader can map them one to one; the Llama fields (`n_kv_heads`,
`hidden_dim`, `rope_base`, `rope_scaling`) are added beside them. The pieces that differ between the
architectures are component fields, each filled in from `arch` unless given:

| arch  | norm      | mlp                   | positions          | bias            |
| gpt2  | layernorm | gelu (tanh), d->4d->d | learned (absolute) | yes (qkv: flag) |
| llama | rmsnorm   | swiglu, d->hidden->d  | rope               | none            |

The model code reads only the components, never `arch`; `arch` names the family for HuggingFace/Meta
weights. Presets are plain data (`presets.py`); `get_config` accepts a preset name or a file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError, check_fields
from scratchllm.files import atomic_write
from scratchllm.models.presets import PRESETS

ARCHS = ("gpt2", "llama")
# Each architecture's own components (what a field left as None becomes).
COMPONENTS = {
    "gpt2": {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "bias": True},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False},
}
CHOICES = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"), "positions": ("learned", "rope")}


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
    # components (None = the architecture's own, see COMPONENTS)
    norm: str | None = None
    mlp: str | None = None
    positions: str | None = None
    bias: bool | None = None  # biases on the output projection, feed-forward and norms
    # Which of the derived fields were filled in from the others, so `replace` re-derives them.
    _derived: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self, f"model config {self.name!r}")
        derivable = ("n_kv_heads", "head_dim", "hidden_dim", *COMPONENTS["gpt2"])
        self._derived = frozenset(n for n in derivable if getattr(self, n) is None)
        if self.arch not in ARCHS:
            raise ScratchLLMError(f"config {self.name!r}: field 'arch' is {self.arch!r}, expected one of {ARCHS}")
        for name, value in COMPONENTS[self.arch].items():
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

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def uses_rope(self) -> bool:
        return self.positions == "rope"

    def is_family_standard(self) -> bool:
        """True when the components are the architecture's own (what HF's GPT2/Llama classes can hold)."""
        return all(getattr(self, k) == v for k, v in COMPONENTS[self.arch].items())

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
