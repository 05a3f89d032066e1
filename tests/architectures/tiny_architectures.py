"""Tiny random models of every registered architecture, built from their configs (no Hub, no network),
saved with the shared WordPiece tokenizer of tests/tiny_fixtures.py (pad id 0 = config pad_token_id)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tiny_fixtures import LABELS, TINY_MAX_POSITIONS, VOCAB, save_tiny_tokenizer

_COMMON: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=len(VOCAB),
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=0,
)


def _bert() -> Any:
    from transformers import BertConfig

    return BertConfig(**_COMMON, max_position_embeddings=TINY_MAX_POSITIONS)


def _roberta() -> Any:
    from transformers import RobertaConfig

    # positions start at pad_token_id + 1: TINY_MAX_POSITIONS + 2 embeddings hold TINY_MAX_POSITIONS + 1 tokens
    return RobertaConfig(**_COMMON, max_position_embeddings=TINY_MAX_POSITIONS + 2, type_vocab_size=1)


def _xlm_roberta() -> Any:
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(**_COMMON, max_position_embeddings=TINY_MAX_POSITIONS + 2, type_vocab_size=1)


def _electra() -> Any:
    from transformers import ElectraConfig

    return ElectraConfig(**_COMMON, embedding_size=16, max_position_embeddings=TINY_MAX_POSITIONS)


def _distilbert() -> Any:
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0, attention_dropout=0.0,
        max_position_embeddings=TINY_MAX_POSITIONS, pad_token_id=0,
    )


def _mpnet() -> Any:
    from transformers import MPNetConfig

    return MPNetConfig(**_COMMON, max_position_embeddings=TINY_MAX_POSITIONS + 2)


def _albert() -> Any:
    from transformers import AlbertConfig

    # 3 applications of one shared layer: the call sites are encoder.layer.0..2
    return AlbertConfig(**{**_COMMON, "num_hidden_layers": 3}, embedding_size=16, num_hidden_groups=1, max_position_embeddings=TINY_MAX_POSITIONS)


def _deberta_v2() -> Any:
    from transformers import DebertaV2Config

    # DeBERTa-v3's layout: relative attention with shared keys (query_proj/key_proj called twice per layer).
    # The modeling code reads these with getattr; transformers 5's config signature does not declare them.
    v3: dict[str, Any] = {"share_att_key": True, "position_buckets": 16, "norm_rel_ebd": "layer_norm"}
    return DebertaV2Config(
        **_COMMON, **v3, max_position_embeddings=TINY_MAX_POSITIONS, relative_attention=True, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, max_relative_positions=-1, type_vocab_size=0,
    )


CONFIGS: dict[str, Callable[[], Any]] = {
    "bert": _bert,
    "roberta": _roberta,
    "xlm-roberta": _xlm_roberta,
    "electra": _electra,
    "distilbert": _distilbert,
    "mpnet": _mpnet,
    "albert": _albert,
    "deberta-v2": _deberta_v2,
}


def save_tiny_architecture(model_type: str, folder: Path, *, classifier: bool = False, **overrides: Any) -> Path:
    from transformers import AutoModel, AutoModelForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    cfg = CONFIGS[model_type]()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    if classifier:
        cfg.num_labels = len(LABELS)
        cfg.id2label = dict(enumerate(LABELS))
        cfg.label2id = {n: i for i, n in enumerate(LABELS)}
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModel.from_config(cfg)
    model.eval().save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder
