"""ELECTRA: BERT's layout; the embeddings may be projected (`embeddings_project`, outside the blocks)."""

from __future__ import annotations

from .base import Architecture
from .bert import BERT_LAYOUT
from .registry import register


@register
class Electra(Architecture):
    name = "ELECTRA"
    model_types = ("electra",)
    layout = BERT_LAYOUT
