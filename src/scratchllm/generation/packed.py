"""Decode-time Linear layers: each product runs the kernel measured fastest for its shape and row count here.

Why: decoding multiplies a few rows (one per sequence) by every weight matrix, so its speed is the speed at
which the product streams weights from memory, and which kernel streams fastest is a property of the CPU,
the dtype, the shape and the number of rows, not of the code. Candidates for one row:
- `F.linear` (MKL / oneDNN through aten's addmm),
- `torch.mv` / `addmv`, a matrix-vector kernel: for bf16 it streams far faster than `F.linear`, whose bf16
  path is a blocked matrix product that one row cannot feed,
- fp32 only: oneDNN's product with the weight stored once in its own blocked layout ("onednn").
For a few rows (batched decode, `FEW_ROWS`), fp32 only: MKL's product on a weight packed once for it ("mkl").
`F.linear`'s fp32 product re-packs the weight on every call for 4 to 16 rows, which streams it at half the
speed or less (a batch of 8 cost 2.3x one row for gpt2-small); a weight packed once does not.
`prepare_linears` races the candidates once per process, shape and dtype, on the model's own weights of
that shape (the working set decoding streams, so caches help the measurement as much as they help decoding:
this development machine's VM reports a 300 MB L3), and keeps the fastest; matrices under 1 MB stay plain.
More rows than `FEW_ROWS` (prefill) always run `F.linear`. docs/benchmarks.md has the measured figures.

Costs: a packed copy is not a Parameter (no gradients, not in `parameters()`) and takes memory of its own
(MKL's buffer is 1.5-2.6x the weight), so the few-rows copies are made only while they would take under
half the memory still available (a large fp32 model batches with `F.linear`, and stderr says so); the
layer keeps its weight, so a tied head still shares the embedding's storage. Values are those of
`F.linear` up to rounding.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = range(4, 17)  # batched-decode row counts given MKL's packed product where it was measured faster
MKL_PACK_RATIO = 2.7  # the most MKL's packed buffer took per byte of weight (2304 x 768 fp32: 2.64)
ONE_ROW_KERNELS = ("linear", "mv", "onednn")
_ONE_ROW: dict[tuple, str] = {}  # (out, in, dtype, bias) -> the one-row kernel measured fastest here
_FEW_ROWS: dict[tuple, str] = {}  # the same key -> "linear" or "mkl" for FEW_ROWS rows


_LIVE: weakref.WeakValueDictionary[int, DecodeLinear] = weakref.WeakValueDictionary()  # for `decode_product`
_IDS = itertools.count()


def mkl_packing() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class DecodeLinear(nn.Module):
    """A frozen Linear whose product takes the kernel chosen for one row (`one_row`) or for a few rows
    (`few_rows`, "linear" or "mkl"); any other number of rows runs `F.linear`."""

    def __init__(self, layer: nn.Linear, one_row: str = "linear", few_rows: str = "linear"):
        super().__init__()
        if one_row not in ONE_ROW_KERNELS or few_rows not in ("linear", "mkl"):
            raise ValueError(f"unknown kernels {one_row!r} / {few_rows!r}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = layer.weight  # shared, not copied: a tied head keeps using the embedding's storage
        self.bias = layer.bias
        self.one_row, self.few_rows = one_row, few_rows
        weight = layer.weight.detach().contiguous()
        onednn = weight.to_mkldnn() if one_row == "onednn" else None
        self.register_buffer("onednn", onednn, persistent=False)
        onednn_bias = None if onednn is None or self.bias is None else self.bias.detach().to_mkldnn()
        self.register_buffer("onednn_bias", onednn_bias, persistent=False)
        mkl = torch.ops.mkl._mkl_reorder_linear_weight(weight, FEW_ROWS[-1]) if few_rows == "mkl" else None
        self.register_buffer("mkl", mkl, persistent=False)
        self.ident = next(_IDS)
        _LIVE[self.ident] = self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # an opaque call: inductor must not swap the kernel for its own
            return torch.ops.scratchllm.decode_product(x, self.ident)
        return self.product(x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        if n == 1 and self.one_row == "mv":
            row = rows[0]
            y = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
        elif n == 1 and self.one_row == "onednn":
            y = torch._C._nn.mkldnn_linear(rows.contiguous().to_mkldnn(), self.onednn, self.onednn_bias).to_dense()
        elif n in FEW_ROWS and self.mkl is not None:
            y = torch.ops.mkl._mkl_linear(rows.contiguous(), self.mkl, self.weight, self.bias, n)
        else:
            y = F.linear(rows, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


# A compiled decode step (generation/compiled.py) calls each DecodeLinear through this op, which inductor
# treats as a black box: traced, the products would become inductor's own (see there), and MKL's packed
# product wants the row count as a constant. The layer is named by a number because an op's arguments are
# tensors and scalars; its weights are constants of the step.
@torch.library.custom_op("scratchllm::decode_product", mutates_args=())
def decode_product(x: torch.Tensor, layer: int) -> torch.Tensor:
    return _LIVE[layer].product(x)


@decode_product.register_fake
def _(x: torch.Tensor, layer: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _LIVE[layer].out_features)


@torch.inference_mode()
def prepare_linears(model: nn.Module, rows: int = 1) -> int:
    """Give every plain frozen CPU Linear of `model` its fastest kernels for one row and, where decoding will
    batch at least `FEW_ROWS[0]` rows (`rows`, the engine's batch), for a few; returns how many changed.

    Layers are grouped by shape, dtype and bias, and each group's kernels are timed on the group's own
    weights (up to 512 MB of them): the working set a decode step streams, so the measurement sees the
    caches as decoding does."""
    from scratchllm.hardware import available_memory
    from scratchllm.models.linear import rewrite_linears

    few = rows >= FEW_ROWS[0]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for layer in model.modules():
        if type(layer) is nn.Linear and layer.weight.device.type == "cpu":
            groups.setdefault(_key(layer), []).append(layer.weight)
    for key, weights in groups.items():
        if key not in _ONE_ROW:
            _ONE_ROW[key] = fastest_kernel(weights, key[3])
        if few and key not in _FEW_ROWS:
            _FEW_ROWS[key] = fastest_few_rows(weights, key[3])
    if few:
        packing = sum(w.numel() * w.element_size() for key, ws in groups.items() if _FEW_ROWS[key] == "mkl"
                      for w in {w.data_ptr(): w for w in ws}.values())  # fmt: skip
        free = available_memory()
        if packing and free is not None and MKL_PACK_RATIO * packing > free / 2:
            few = False
            print(f"note: batched decoding keeps F.linear: packing {packing / 2**30:.1f} GiB of fp32 weights for "
                  f"it would take up to {MKL_PACK_RATIO * packing / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB "
                  "is available", file=sys.stderr)  # fmt: skip
    changed = 0

    def rewrite(name: str, layer: nn.Module) -> nn.Module:
        nonlocal changed
        if type(layer) is not nn.Linear or layer.weight.device.type != "cpu":
            return layer
        one_row, few_rows = _ONE_ROW[_key(layer)], _FEW_ROWS[_key(layer)] if few else "linear"
        if one_row == few_rows == "linear":
            return layer
        changed += 1
        return DecodeLinear(layer, one_row, few_rows)

    rewrite_linears(model, rewrite)
    return changed


def _key(layer: nn.Linear) -> tuple:
    return (*layer.weight.shape, layer.weight.dtype, layer.bias is not None)


def _sample(weights: list[torch.Tensor], bias: bool) -> tuple[list[torch.Tensor], torch.Tensor | None, int]:
    size = weights[0].numel() * weights[0].element_size()
    b = torch.zeros(weights[0].shape[0], dtype=weights[0].dtype) if bias else None
    return [w.detach() for w in weights[: max(1, (512 << 20) // size)]], b, size


def fastest_kernel(weights: list[torch.Tensor], bias: bool = False) -> str:
    """"linear", "mv" or "onednn": the one-row product that streams these (out, in) weights fastest here
    (`_fastest`). Under 1 MB a matrix stays "linear"."""
    weights, b, size = _sample(weights, bias)
    if size < 1 << 20:
        return "linear"
    dtype, x = weights[0].dtype, torch.ones(1, weights[0].shape[1], dtype=weights[0].dtype)
    candidates = {
        "linear": lambda: [F.linear(x, w, b) for w in weights],
        "mv": lambda: [torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0]) for w in weights],
    }
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        packed = [w.to_mkldnn() for w in weights]
        pb = None if b is None else b.to_mkldnn()
        candidates["onednn"] = lambda: [torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, pb).to_dense() for w in packed]
    return _fastest(candidates)


def fastest_few_rows(weights: list[torch.Tensor], bias: bool = False) -> str:
    """"linear" or "mkl": the faster product of 8 rows by these weights here (`_fastest`); MKL's packed
    product is fp32 only, and under 1 MB a matrix stays "linear"."""
    weights, b, size = _sample(weights, bias)
    if size < 1 << 20 or weights[0].dtype != torch.float32 or not mkl_packing():
        return "linear"
    n = 8
    x = torch.ones(n, weights[0].shape[1])
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(w.contiguous(), FEW_ROWS[-1]) for w in weights]
    return _fastest({
        "linear": lambda: [F.linear(x, w, b) for w in weights],
        "mkl": lambda: [torch.ops.mkl._mkl_linear(x, p, w, b, n) for p, w in zip(packed, weights)],
    })  # fmt: skip


def _fastest(candidates: dict[str, Callable[[], object]], rounds: int = 5) -> str:
    """The candidate with the lowest median time over `rounds` rounds, if that median is 5% under "linear"'s
    (else "linear"). Each round runs every candidate, starting with a different one, so a drift in this
    machine's speed falls on all of them; the median ignores a pass that a burst elsewhere slowed (a
    best-of-three once took oneDNN's 671 MB product at 28.8 ms and, next time, 89.6)."""
    for products in candidates.values():
        products()  # first touch and warm-up
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = min(median, key=median.get)
    return best if median[best] < 0.95 * median["linear"] else "linear"
