"""RoBERTa, XLM-R and CamemBERT: BERT's layout with position ids offset by the padding index."""

from __future__ import annotations

from typing import Any

from quant_workbench.quantize.architectures.base import Architecture
from quant_workbench.quantize.architectures.bert import BERT_LAYOUT
from quant_workbench.quantize.architectures.registry import register


@register
class Roberta(Architecture):
    name = "RoBERTa"
    model_types = ("roberta", "xlm-roberta", "camembert")
    layout = BERT_LAYOUT

    def sequence_limit(self, config: Any) -> int | None:
        # Positions start at padding_idx + 1 (create_position_ids_from_input_ids), so the last usable
        # one is max_position_embeddings - 1: 514 embeddings hold 512 tokens, not 514.
        limit = super().sequence_limit(config)
        return None if limit is None else limit - int(config.pad_token_id) - 1
