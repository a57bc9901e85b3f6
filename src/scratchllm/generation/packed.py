"""fp32 Linear layers with their weights pre-packed for oneDNN: the engine's default on CPU (inference only).

Why: decoding multiplies a few rows by every weight matrix, so its speed is the speed at which the
product streams weights from memory. Measured on our 2-core development machine (AMD EPYC, torch 2.13),
with 40 distinct 3072 x 768 fp32 matrices so that caches do not help: `F.linear` (MKL) streams 16.6 GB/s
for one row and 10.6 GB/s for eight, while oneDNN's product with the weight stored once in its own
blocked layout streams 34.8 and 22.5 GB/s. Whole gpt2-small decode steps went from 24 to 16 ms (1 row)
and 49 to 28 ms (8 rows); with oneDNN capped at AVX2 from 27 to 19 ms and 56 to 37 ms. bf16 gains nothing
(torch already runs bf16 products through oneDNN), so only fp32 layers are packed.

But it is a property of the CPU, not of the code: on an Intel Xeon with AVX512-BF16 (torch 2.13, 2 cores) the
same oneDNN product streamed 12.9 GB/s where `F.linear` streamed 16.7 (3072 x 768, one row), and Gemma 3
270M decoded at 10.6 tokens/s packed against 13.2 plain. So `pack_linear` times both products once per
process and weight shape (on 32 MB of matrices of that shape, best of three) and packs only where oneDNN is
measurably faster; matrices under 1 MB, whose products caches serve, stay plain.

Costs: the packed copy is not a Parameter (no gradients, not in `parameters()`), and a tied output head
gets its own packed copy (+154 MB for gpt2-small in fp32). Values are those of `F.linear` up to rounding.
"""

from __future__ import annotations

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


def pack_linear(name: str, layer: nn.Module) -> nn.Module:
    """`PackedLinear` for a plain fp32 CPU Linear where oneDNN is available and faster; anything else unchanged."""
    packable = (
        type(layer) is nn.Linear
        and layer.weight.dtype == torch.float32
        and layer.weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
    )
    return PackedLinear(layer) if packable and packing_pays_off(layer.weight) else layer


_MEASURED: dict[tuple[int, int], bool] = {}


@torch.inference_mode()
def packing_pays_off(weight: torch.Tensor) -> bool:
    """Whether oneDNN's packed product of one row streams this (out, in) weight 5% faster than `F.linear` here,
    timed on copies of it (32 MB of them, so caches do not serve the product), once per shape and process."""
    out_features, in_features = weight.shape
    if weight.numel() * 4 < 1 << 20:
        return False
    key = (out_features, in_features)
    if key not in _MEASURED:
        count = (32 << 20) // (weight.numel() * 4)
        plain = [weight.detach().clone() for _ in range(count)] or [weight.detach()]
        packed = [w.to_mkldnn() for w in plain]
        x = torch.ones(1, in_features)
        linear = lambda: [F.linear(x, w) for w in plain]  # noqa: E731
        onednn = lambda: [torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, None).to_dense() for w in packed]  # noqa: E731
        _MEASURED[key] = _best_seconds(onednn) < 0.95 * _best_seconds(linear)
    return _MEASURED[key]


def _best_seconds(products) -> float:
    import time

    products()  # first touch and warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        products()
        best = min(best, time.perf_counter() - start)
    return best
