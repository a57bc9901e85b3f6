"""Writing and reading our model files safely.

Decisions:
- Weights are safetensors (no pickle: loading cannot run code, and files memory-map).
- Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
  target: a crash or Ctrl-C mid-write leaves either the old file or the new one, never half of one.
- A model folder holds `model_config.json` (the `ModelConfig`) next to `model.safetensors`, and the
  tokenizer file, so it can be loaded anywhere without the corpus or the training config.
- Loading checks every tensor name and shape against the config before touching the model, and names
  the file and the first mismatch in its error; weights holding NaN or infinity are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write, read_json
from scratchllm.models.config import ModelConfig, from_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses shared storage (a tied head); store each tensor once, contiguous.
    unique: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, t in tensors.items():
        key = t.data_ptr()
        if key in seen and t.numel() and tensors[seen[key]].shape == t.shape:
            continue
        seen[key] = name
        unique[name] = t.detach().contiguous().cpu()
    return atomic_write(path, lambda tmp: save_file(unique, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file tensor by tensor (memory-mapped), converting floats to `dtype` as they come.

    Peak memory is the result plus one tensor, not twice the file: what makes an 8B model loadable in bf16
    on a machine with 20 GB.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(f"{path}: file not found")
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ScratchLLMError(f"{path}: not a readable safetensors file ({e}); it may be truncated") from None
    return out


SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def _safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (name -> dtype, shape, offsets), without reading any tensor."""
    import json as _json
    import struct

    with open(path, "rb") as f:
        return _json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


def stored_float_dtype(path: str | Path) -> torch.dtype | None:
    """The dtype most of a safetensors file's floating-point weights are stored in, from its header only."""
    import struct
    from collections import Counter

    try:
        header = _safetensors_header(path)
    except (OSError, ValueError, struct.error):
        return None
    counts = Counter(info["dtype"] for name, info in header.items()
                     if name != "__metadata__" and info.get("dtype") in SAFETENSORS_FLOATS)  # fmt: skip
    return SAFETENSORS_FLOATS[counts.most_common(1)[0][0]] if counts else None


def tensor_bytes(path: str | Path, dtype: torch.dtype | None = None) -> int:
    """Bytes the tensors of a safetensors file take once loaded (in `dtype`), read from its header only."""
    header = _safetensors_header(path)
    sizes = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "BF16": 2, "F16": 2, "U8": 1, "I8": 1, "BOOL": 1}
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= d
        floating = info["dtype"] in ("F64", "F32", "BF16", "F16")
        size = torch.finfo(dtype).bits // 8 if dtype is not None and floating else sizes.get(info["dtype"], 4)
        total += n * size
    return total


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """State-dict names that are the same tensor as an earlier name (a tied head): alias -> first name.

    Files store a shared tensor once (safetensors refuses aliases); readers fill the aliases back from this,
    whatever the model calls its head (`out_head`, `backbone.out_head`, ...).
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise a one-line error naming the first missing, unexpected or wrongly shaped tensor."""
    expected = model.state_dict()
    aliases = tied_aliases(model)
    for name, t in expected.items():
        if name not in tensors:
            if name in aliases:
                continue
            raise ScratchLLMError(f"{where}: missing tensor {name!r} (shape {tuple(t.shape)})")
        if tensors[name].shape != t.shape:
            raise ScratchLLMError(
                f"{where}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the config expects {tuple(t.shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ScratchLLMError(f"{where}: unexpected tensor {extra[0]!r} (is this checkpoint another architecture?)")


def save_model(model, folder: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model_config.json` and `model.safetensors` (default: the full weights, LoRA adapters merged)."""
    from scratchllm.models.lora import merged_state_dict

    folder = Path(folder)
    config_json = json.dumps(model.config.to_dict(), indent=2)
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(config_json))
    if tensors is None:
        tensors = merged_state_dict(model) if isinstance(model, torch.nn.Module) else model.state_dict()
    save_tensors(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt", "producer": "scratchllm"})
    return folder


def read_model_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise ScratchLLMError(f"{folder}: no {CONFIG_FILE}; not a scratchllm model folder")
    return from_dict(read_json(path), str(path))


def model_from_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], where: str, dtype, device: str):
    """A model for `config` holding `tensors` (our names), checked first, with no random init pass."""
    from scratchllm.models import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    check_state_dict(model, tensors, where)
    check_finite(tensors, where)
    return materialize(model, tensors, dtype, device)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Weights holding NaN or infinity (a diverged run, a damaged file) are refused when read, not generated from."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ScratchLLMError(f"{where}: tensor {name!r} holds NaN or infinity; these weights are unusable")


def load_model_folder(folder: str | Path, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Build the model described by `model_config.json` and load `model.safetensors` into it."""
    folder = Path(folder)
    config = read_model_config(folder)
    tensors = load_tensors(folder / WEIGHTS_FILE, dtype)
    return model_from_tensors(config, tensors, str(folder / WEIGHTS_FILE), dtype, device)


def materialize(model, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None, device: str):
    """Move a meta-device model to real storage holding `tensors`, without a random init pass first."""
    for alias, name in tied_aliases(model).items():
        tensors.setdefault(alias, tensors[name])
    if dtype is not None:  # a no-op for tensors already converted while reading
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(tensors, assign=True, strict=True)
    model.tie_weights()  # assign=True replaced the shared Parameter with two
    # Non-persistent buffers (RoPE tables) were created on meta; rebuild them for real.
    if model.config.uses_rope:
        model.init_rope()
    return model.to(device).eval()
