"""Weight-only int8 and int4 quantisation for faster decoding (as in gpt-fast).

Decoding is bound by reading the weights, so storing them in fewer bits reads fewer bytes per token:
- int8: one scale per output row, symmetric (w ~= scale * round(w / scale), |round| <= 127), half the
  bytes of bf16. On CPU `torch._weight_int8pack_mm` multiplies bf16/fp32 activations by the int8 weights
  without expanding them; elsewhere we dequantise on the fly (correct, not faster).
- int4: groups of 32 consecutive inputs share a scale and an offset (asymmetric: w ~= (q - 8) * scale +
  zero, q in 0..15), a quarter of the bytes of bf16 plus 4 bytes per group; the groups are llama.cpp's q4_0
  blocks, so the two trade the same precision. `torch._weight_int4pack_mm_for_cpu` multiplies bf16
  activations by the packed nibbles (the model runs in bf16); a layer whose input width is not a multiple
  of 32 stays in float, as llama.cpp keeps such rows in f16.
Activations stay in the model's float dtype. Embeddings and norms stay in float; a tied output head gets its
own quantised copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.models.linear import rewrite_linears


class Int8Linear(nn.Module):
    """A frozen Linear layer with int8 weights and per-output-channel scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).contiguous()
        if flat.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm"):
            y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales.to(flat.dtype))
        else:
            y = F.linear(flat, self.weight_int8.to(flat.dtype) * self.scales.to(flat.dtype)[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


@torch.no_grad()
def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every Linear of a `Transformer` (blocks and output head) by `Int8Linear`, in place."""
    rewrite_linears(model, lambda name, layer: Int8Linear(layer))
    return model


INT4_GROUP = 32


class Int4Linear(nn.Module):
    """A frozen Linear with 4-bit weights in groups of `INT4_GROUP` inputs, each with a scale and an offset."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        out_features, in_features = linear.weight.shape
        weight = linear.weight.detach().float()
        padded = -out_features % 16  # the kernel packs rows 16 at a time: zero rows, sliced off the output
        weight = torch.cat([weight, weight.new_zeros(padded, in_features)]) if padded else weight
        groups = weight.reshape(out_features + padded, in_features // group, group)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scales = ((high - low) / 15).clamp(min=1e-6)
        q = torch.round((groups - low) / scales).clamp(0, 15).to(torch.int32).reshape(-1, in_features)
        zeros = low + 8 * scales  # the kernel computes (q - 8) * scale + zero
        self.register_buffer("weight_int4", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        scales_and_zeros = torch.cat([scales, zeros], dim=-1).transpose(0, 1)  # (groups, out, 2)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features, self.group = in_features, out_features, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch._weight_int4pack_mm_for_cpu(flat, self.weight_int4, self.group, self.scales_and_zeros)
        y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


@torch.no_grad()
def quantize_int4(model: nn.Module) -> nn.Module:
    """Replace every Linear whose input width splits into 32-value groups by `Int4Linear`, in place (CPU only)."""
    from scratchllm.errors import ScratchLLMError

    if next(model.parameters()).device.type != "cpu" or not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        raise ScratchLLMError("int4 quantisation runs on CPU (torch._weight_int4pack_mm_for_cpu); use int8 elsewhere")
    rewrite_linears(model, lambda name, layer: Int4Linear(layer) if layer.in_features % INT4_GROUP == 0 else layer)
    return model
