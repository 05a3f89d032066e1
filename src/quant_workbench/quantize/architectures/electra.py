"""ELECTRA: BERT's layout; the embeddings may be projected (`embeddings_project`, outside the blocks)."""

from __future__ import annotations

from quant_workbench.quantize.architectures.base import Architecture
from quant_workbench.quantize.architectures.bert import BERT_LAYOUT
from quant_workbench.quantize.architectures.registry import register


@register
class Electra(Architecture):
    name = "ELECTRA"
    model_types = ("electra",)
    layout = BERT_LAYOUT
