"""BERT: the reference layout (post-LN blocks `encoder.layer.N` with `*SelfOutput` / `*Output` residual blocks)."""

from __future__ import annotations

from quant_workbench.quantize.architectures.base import Architecture, BlockLayout
from quant_workbench.quantize.architectures.registry import register

BERT_LAYOUT = BlockLayout(
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    attention_output="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    attention="attention.self",
    residual_adds=(("attention.output", "residual_add"), ("output", "residual_add")),
    value="attention.self.value",
)


@register
class Bert(Architecture):
    name = "BERT"
    model_types = ("bert",)
    layout = BERT_LAYOUT
