"""Decode-time Linear layers: each one's product runs the kernel measured fastest for its shape on this CPU.

Why: decoding multiplies a few rows (one per sequence) by every weight matrix, so its speed is the speed at
which the product streams weights from memory, and which kernel streams fastest is a property of the CPU,
the dtype and the shape, not of the code. Three candidates, for one row:
- `F.linear` (MKL / oneDNN through aten's addmm),
- `torch.mv` / `addmv`, a matrix-vector kernel: for bf16 it streams far faster than `F.linear`, whose bf16
  path is a blocked matrix product that one row cannot feed,
- fp32 only: oneDNN's product with the weight stored once in its own blocked layout (`PackedLinear`).
`prepare_linears` times the three once per process, shape and dtype, on the model's own weights of that
shape (the working set decoding streams, so caches help the measurement as much as they help decoding: this
development machine's VM reports a 300 MB L3), and keeps the fastest; matrices under 1 MB stay plain.
Several rows (prefill, batched decode) run `F.linear`, or the packed product for a packed layer.
docs/benchmarks.md has the measured figures.

Costs: a packed copy is not a Parameter (no gradients, not in `parameters()`), and a tied output head packed
gets its own copy; a `GemvLinear` keeps the layer's own weight. Values are those of `F.linear` up to rounding.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class PackedLinear(nn.Module):
    """A frozen fp32 Linear whose weight lives in oneDNN's layout; inputs and outputs are ordinary tensors."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("weight", layer.weight.detach().contiguous().to_mkldnn(), persistent=False)
        bias = None if layer.bias is None else layer.bias.detach().contiguous().to_mkldnn()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous().to_mkldnn()
        y = torch._C._nn.mkldnn_linear(rows, self.weight, self.bias).to_dense()
        return y.reshape(*x.shape[:-1], self.out_features)


class GemvLinear(nn.Module):
    """A frozen Linear whose one-row product is a matrix-vector product (`torch.mv`, `addmv` with a bias)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = layer.weight  # shared, not copied: a tied head keeps using the embedding's storage
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] != 1:
            return F.linear(x, self.weight, self.bias)
        row = rows[0]
        y = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
        return y.reshape(*x.shape[:-1], self.out_features)


KERNELS = {"packed": PackedLinear, "mv": GemvLinear}
_MEASURED: dict[tuple, str] = {}


@torch.inference_mode()
def prepare_linears(model: nn.Module) -> int:
    """Give every plain frozen CPU Linear of `model` its fastest one-row kernel; returns how many changed.

    Layers are grouped by shape, dtype and bias, and each group's kernels are timed on the group's own
    weights (up to 512 MB of them): the working set a decode step streams, so the measurement sees the
    caches as decoding does."""
    from scratchllm.models.linear import rewrite_linears

    groups: dict[tuple, list[torch.Tensor]] = {}
    for layer in model.modules():
        if type(layer) is nn.Linear and layer.weight.device.type == "cpu":
            groups.setdefault(_key(layer), []).append(layer.weight)
    for key, weights in groups.items():
        if key not in _MEASURED:
            _MEASURED[key] = fastest_kernel(weights, key[3])
    changed = 0

    def rewrite(name: str, layer: nn.Module) -> nn.Module:
        nonlocal changed
        if type(layer) is not nn.Linear or layer.weight.device.type != "cpu" or _MEASURED[_key(layer)] == "linear":
            return layer
        changed += 1
        return KERNELS[_MEASURED[_key(layer)]](layer)

    rewrite_linears(model, rewrite)
    return changed


def _key(layer: nn.Linear) -> tuple:
    return (*layer.weight.shape, layer.weight.dtype, layer.bias is not None)


def fastest_kernel(weights: list[torch.Tensor], bias: bool = False) -> str:
    """"linear", "mv" or "packed": the one-row product that streams these (out, in) weights fastest here
    (best of three passes; 5% faster than `F.linear` to be chosen). Under 1 MB a matrix stays "linear"."""
    out_features, in_features = weights[0].shape
    dtype, size = weights[0].dtype, weights[0].numel() * weights[0].element_size()
    if size < 1 << 20:
        return "linear"
    weights = [w.detach() for w in weights[: max(1, (512 << 20) // size)]]
    b = torch.zeros(out_features, dtype=dtype) if bias else None
    x = torch.ones(1, in_features, dtype=dtype)
    times = {
        "linear": _best_seconds(lambda: [F.linear(x, w, b) for w in weights]),
        "mv": _best_seconds(lambda: [torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0]) for w in weights]),
    }
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        packed = [w.to_mkldnn() for w in weights]
        pb = None if b is None else b.to_mkldnn()
        times["packed"] = _best_seconds(lambda: [torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, pb).to_dense()
                                                 for w in packed])  # fmt: skip
        del packed
    best = min(times, key=times.get)
    return best if times[best] < 0.95 * times["linear"] else "linear"


def _best_seconds(products) -> float:
    products()  # first touch and warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        products()
        best = min(best, time.perf_counter() - start)
    return best
