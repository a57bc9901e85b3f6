"""Weight-only int8 quantisation for faster decoding (as in gpt-fast).

Decoding is bound by reading the weights, so storing them in int8 (one scale per output row, symmetric:
w ~= scale * round(w / scale), |round| <= 127) halves the bytes per token against bf16. Activations stay in
the model's float dtype. On CPU `torch._weight_int8pack_mm` multiplies bf16/fp32 activations by int8
weights without expanding them; elsewhere we fall back to dequantising on the fly (correct, not faster).
Embeddings and norms stay in float; a tied output head gets its own int8 copy.
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
