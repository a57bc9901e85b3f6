"""Meta's original Llama checkpoint layout: `params.json` + `consolidated.NN.pth` + `tokenizer.model`.

Differences from HuggingFace's layout that this module absorbs:
- Names: `tok_embeddings`, `layers.N.attention.wq/wk/wv/wo`, `feed_forward.w1/w2/w3` (w1 = gate,
  w3 = up, w2 = down), `attention_norm`, `ffn_norm`, `norm`, `output`.
- RoPE pairing: Meta rotates neighbouring features (0,1), (2,3), ...; we (like HF) rotate feature i with
  i + head_dim/2. The rows of wq and wk are permuted once at load time so both give the same result.
- The feed-forward width is not stored: it is 2/3 of 4*dim, times `ffn_dim_multiplier`, rounded up to a
  multiple of `multiple_of`. The context length is not stored either (Llama 2: 4096, Llama 3: 8192,
  3.1/3.2 with `use_scaled_rope`: 131072).
- Model-parallel shards (`consolidated.00.pth`, `.01`, ...) split some matrices by rows and others by
  columns; they are concatenated back. The `.pth` files are read with `weights_only=True` (no code runs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models.config import ModelConfig

# Which dimension each tensor is split along across model-parallel shards (absent: replicated).
_SHARD_DIM = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1, "output": 0}


def is_meta_folder(folder: Path) -> bool:
    return (folder / "params.json").exists() and any(folder.glob("consolidated.*.pth"))


def feed_forward_width(dim: int, multiple_of: int, multiplier: float | None) -> int:
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def config_from_params(params: dict, vocab_size: int, name: str) -> ModelConfig:
    try:
        dim, n_heads = params["dim"], params["n_heads"]
        vocab = params.get("vocab_size", -1)
        vocab = vocab if vocab and vocab > 0 else vocab_size
        llama3 = vocab >= 128000
        scaled = bool(params.get("use_scaled_rope"))
        scaling = None
        if scaled:
            factor = params.get("rope_scaling_factor", 8.0 if dim >= 4096 else 32.0)
            scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_context_length": 8192}  # fmt: skip
        return ModelConfig(
            name=name, arch="llama", vocab_size=vocab, emb_dim=dim, n_heads=n_heads,
            n_kv_heads=params.get("n_kv_heads") or n_heads, n_layers=params["n_layers"],
            hidden_dim=feed_forward_width(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
            norm_eps=params.get("norm_eps", 1e-5), rope_base=params.get("rope_theta", 10000.0), rope_scaling=scaling,
            context_length=131072 if scaled else (8192 if llama3 else 4096), tie_embeddings=False,
        )  # fmt: skip
    except KeyError as e:
        raise ScratchLLMError(f"params.json: missing field {e.args[0]!r}") from None


def _rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder rows from Meta's interleaved RoPE pairs to the rotate-half layout."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def load_meta_state(folder: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    shards = sorted(folder.glob("consolidated.*.pth"))
    parts = []
    for shard in shards:
        try:
            sd = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # unpickling raises many types; all mean "unsafe or broken file"
            raise ScratchLLMError(f"{shard}: cannot load safely ({e})") from None
        parts.append(sd)
    merged = {}
    for name in parts[0]:
        if name.endswith("rope.freqs"):
            continue
        kind = name.split(".")[-2]
        tensors = [p[name] for p in parts]
        if len(tensors) > 1 and kind in _SHARD_DIM:
            t = torch.cat(tensors, dim=_SHARD_DIM[kind])
        else:
            t = tensors[0]
        merged[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return merged


def state_dict_from_meta(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"tok_emb.weight": sd["tok_embeddings.weight"], "final_norm.weight": sd["norm.weight"],
           "out_head.weight": sd["output.weight"]}  # fmt: skip
    for i in range(config.n_layers):
        m, b = f"layers.{i}.", f"blocks.{i}."
        try:
            q = _rope_permute(sd[f"{m}attention.wq.weight"], config.n_heads)
            k = _rope_permute(sd[f"{m}attention.wk.weight"], config.n_kv_heads)
            out[f"{b}attn.qkv.weight"] = torch.cat([q, k, sd[f"{m}attention.wv.weight"]], dim=0)
            out[f"{b}attn.proj.weight"] = sd[f"{m}attention.wo.weight"]
            out[f"{b}ff.gate.weight"] = sd[f"{m}feed_forward.w1.weight"]
            out[f"{b}ff.up.weight"] = sd[f"{m}feed_forward.w3.weight"]
            out[f"{b}ff.down.weight"] = sd[f"{m}feed_forward.w2.weight"]
            out[f"{b}norm1.weight"] = sd[f"{m}attention_norm.weight"]
            out[f"{b}norm2.weight"] = sd[f"{m}ffn_norm.weight"]
        except KeyError as e:
            raise ScratchLLMError(f"Meta checkpoint is missing tensor {e.args[0]!r}") from None
    return out


def load_meta_folder(folder: Path, dtype: torch.dtype | None, device: str):
    """Model and tokenizer from a Meta-layout Llama folder."""
    from scratchllm.checkpoints.io import model_from_tensors
    from scratchllm.files import read_json
    from scratchllm.tokenizers.formats import load_tokenizer

    params = read_json(folder / "params.json")
    tokenizer = load_tokenizer(folder / "tokenizer.model") if (folder / "tokenizer.model").exists() else None
    vocab = tokenizer.vocab_size if tokenizer is not None else -1
    config = config_from_params(params, vocab, folder.name)
    ours = state_dict_from_meta(load_meta_state(folder, dtype), config)
    return model_from_tensors(config, ours, str(folder), dtype, device), tokenizer
