"""Swapped-in quantized modules carrying `input_quantizer` / `weight_quantizer` (NVIDIA's naming).

- QuantLinear replaces nn.Linear and shares its Parameters, so QAT trains the original weights.
- QuantMatMul holds the two quantizers of an attention matmul (Q·Kᵀ or probabilities·V); it is
  attached to the self-attention module as `qk_matmul` / `pv_matmul` and used by the attention
  function registered below.
- QuantAdd holds the two quantizers of a residual add; where it is attached and how the block's
  forward calls it is the architecture's business (architectures/).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quant_workbench.quantize.quantizer import QuantFormat, TensorQuantizer

ACTIVATION_FORMAT = QuantFormat("int8", axis=None)
ATTENTION_FUNCTION = "quant_workbench_eager"


class QuantLinear(nn.Linear):
    smooth_scale: torch.Tensor | None

    def __init__(self, linear: nn.Linear, weight_fmt: QuantFormat, input_fmt: QuantFormat = ACTIVATION_FORMAT) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_quantizer = TensorQuantizer(input_fmt)
        self.weight_quantizer = TensorQuantizer(weight_fmt, num_channels=linear.out_features)
        # SmoothQuant's per-input-channel 1/s (quantize/smoothquant.py), applied before the input
        # quantizer whatever its state; the weight then holds W * s. None = not smoothed.
        self.register_buffer("smooth_scale", None)
        # Call sites of this Linear (architectures/: one child module per extra call, sharing the
        # Parameters) stay children, so `ignore: [<this Linear>]` keeps every call float.
        for child_name, child in linear.named_children():
            self.add_module(child_name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth_scale is not None:
            x = x * self.smooth_scale
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)

    def to_float(self) -> nn.Linear:
        if self.smooth_scale is not None:
            raise ValueError("a smoothed QuantLinear has no plain nn.Linear equivalent; restore the SmoothQuant state first")
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.weight = self.weight
        lin.bias = self.bias
        for child_name, child in self.named_children():
            if not isinstance(child, TensorQuantizer):
                lin.add_module(child_name, child)
        return lin


class _QuantBinary(nn.Module):
    """A two-operand op with both operands quantized per tensor (`input_quantizer`, `other_quantizer`)."""

    def __init__(self, fmt: QuantFormat = ACTIVATION_FORMAT) -> None:
        super().__init__()
        self.input_quantizer = TensorQuantizer(fmt)
        self.other_quantizer = TensorQuantizer(fmt)


class QuantMatMul(_QuantBinary):
    """torch.matmul(input, other) with both operands quantized per tensor."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.input_quantizer(a), self.other_quantizer(b))


class QuantAdd(_QuantBinary):
    """input + other (a residual connection) with both operands quantized per tensor."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(a) + self.other_quantizer(b)


def quant_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (same math as transformers' eager path) with optional quantized matmuls."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    qk: nn.Module | None = getattr(module, "qk_matmul", None)
    pv: nn.Module | None = getattr(module, "pv_matmul", None)
    key_t = key.transpose(2, 3)
    scores = qk(query, key_t) if qk is not None else torch.matmul(query, key_t)
    scores = scores * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = pv(probs, value) if pv is not None else torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


def register_attention_function() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_FUNCTION, quant_attention_forward)
    # transformers 5 builds the attention mask only for implementations that have a mask function:
    # without this the mask silently stays None and padded positions take part in attention.
    try:
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import eager_mask
    except ImportError:  # transformers 4.x passes the 4D additive mask to any implementation
        return
    AttentionMaskInterface.register(ATTENTION_FUNCTION, eager_mask)


def attach_attention_matmuls(attn: nn.Module) -> tuple[QuantMatMul, QuantMatMul]:
    qk, pv = QuantMatMul(), QuantMatMul()
    attn.qk_matmul = qk
    attn.pv_matmul = pv
    return qk, pv
