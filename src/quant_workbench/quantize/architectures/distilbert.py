"""DistilBERT: blocks `transformer.layer.N`, q_lin/k_lin/v_lin/out_lin, ffn.lin1/lin2, both residual
adds inside the block's own forward, no token_type_ids."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quant_workbench.quantize.architectures.base import Architecture, BlockLayout
from quant_workbench.quantize.architectures.registry import register
from quant_workbench.quantize.modules import QuantAdd


@register
class DistilBert(Architecture):
    name = "DistilBERT"
    model_types = ("distilbert",)
    block_pattern = r"(?:.*\.)?transformer\.layer\.\d+"
    layout = BlockLayout(
        qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attention_output="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        attention="attention",  # DistilBertSelfAttention calls the registered attention function
        residual_adds=(("", "sa_residual_add"), ("", "output_residual_add")),
        value="attention.v_lin",
    )

    def uses_token_type_ids(self, config: Any) -> bool:
        return False  # DistilBertModel.forward has no token_type_ids argument

    def attach_residual_adds(self, module: nn.Module, attrs: Sequence[str]) -> None:
        module.sa_residual_add = QuantAdd()
        module.output_residual_add = QuantAdd()
        module.forward = types.MethodType(_block_forward, module)


def _block_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """transformers' TransformerBlock.forward with both residual adds quantizable."""
    attention_output, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
    attention_output = self.sa_layer_norm(self.sa_residual_add(attention_output, hidden_states))
    ffn_output = self.ffn(attention_output)
    out: torch.Tensor = self.output_layer_norm(self.output_residual_add(ffn_output, attention_output))
    return out
