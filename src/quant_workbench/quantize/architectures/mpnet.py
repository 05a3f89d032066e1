"""MPNet: BERT-like blocks with the attention in `attention.attn` (q/k/v/o) computed in its own forward
(relative position bias added to the scores), position ids offset by the fixed padding index 1, and
no token_type_ids."""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from quant_workbench.quantize.architectures.base import Architecture, BlockLayout
from quant_workbench.quantize.architectures.registry import register
from quant_workbench.quantize.modules import QuantAdd, attach_attention_matmuls

# MPNetEmbeddings hard-codes padding_idx = 1 whatever the config says.
_MPNET_PADDING_IDX = 1


@register
class MPNet(Architecture):
    name = "MPNet"
    model_types = ("mpnet",)
    layout = BlockLayout(
        qkv=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        attention_output="attention.attn.o",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        attention="attention.attn",
        residual_adds=(("attention", "residual_add"), ("output", "residual_add")),
        value="attention.attn.v",
    )

    def sequence_limit(self, config: Any) -> int | None:
        limit = super().sequence_limit(config)
        return None if limit is None else limit - _MPNET_PADDING_IDX - 1

    def uses_token_type_ids(self, config: Any) -> bool:
        return False  # MPNetModel.forward has no token_type_ids argument

    def attach_attention_matmuls(self, attention: nn.Module) -> None:
        attach_attention_matmuls(attention)
        attention.forward = types.MethodType(_self_attention_forward, attention)

    def attach_residual_adds(self, module: nn.Module, attrs: Sequence[str]) -> None:
        if type(module).__name__ == "MPNetAttention":
            module.residual_add = QuantAdd()
            module.forward = types.MethodType(_attention_forward, module)
        else:  # MPNetOutput is a BERT-style *Output block
            super().attach_residual_adds(module, attrs)


def _self_attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """transformers' MPNetSelfAttention.forward with both attention matmuls quantizable."""
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    scores = self.qk_matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = self.dropout(F.softmax(scores, dim=-1))
    c = self.pv_matmul(probs, v).permute(0, 2, 1, 3).contiguous()
    o = self.o(c.view(*c.size()[:-2], self.all_head_size))
    return (o, probs) if output_attentions else (o,)


def _attention_forward(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """transformers' MPNetAttention.forward with its residual add quantizable (the mask, position bias and
    output_attentions go on to the self-attention as MPNetLayer passed them)."""
    self_outputs = self.attn(hidden_states, *args, **kwargs)
    attention_output = self.LayerNorm(self.residual_add(self.dropout(self_outputs[0]), hidden_states))
    return (attention_output, *self_outputs[1:])
