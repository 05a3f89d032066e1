"""Shared fixtures: a tiny random BERT (embedding and 3-class classifier) with a real WordPiece tokenizer,
a small labelled CSV built from the same vocabulary, and a recipe factory pointing at them.

Nothing is downloaded: the models are random BertConfig instances saved with `save_pretrained`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny_fixtures import (
    FILLER,
    LABEL_WORDS,
    LABELS,
    SPECIAL_TOKENS,
    TINY_MAX_POSITIONS,
    TINY_SEQ,
    VOCAB,
    make_rows,
    recipe_dict,
    save_tiny_model,
    tiny_bert_config,
)

# Re-exported for modules that still do `from conftest import ...` (prefer `from tiny_fixtures import ...`).
__all__ = [
    "FILLER",
    "LABELS",
    "LABEL_WORDS",
    "SPECIAL_TOKENS",
    "TINY_MAX_POSITIONS",
    "TINY_SEQ",
    "VOCAB",
    "make_rows",
    "recipe_dict",
    "save_tiny_model",
    "tiny_bert_config",
]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BertModel (hidden 32) plus WordPiece tokenizer, saved locally."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_bert"), classifier=False)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BertForSequenceClassification with 3 labels, saved locally."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_classifier"), classifier=True)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 labelled rows (columns text, label; labels positive/negative/neutral)."""
    path = tmp_path_factory.mktemp("tiny_data") / "tiny.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(make_rows())
    return path


@pytest.fixture
def make_recipe(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> Callable[..., dict[str, Any]]:
    """`make_recipe(**kw)` -> a recipe dict for the tiny embedding model writing under tmp_path."""

    def factory(**kw: Any) -> dict[str, Any]:
        kw.setdefault("out", tmp_path)
        kw.setdefault("model_dir", tiny_bert_dir)
        kw.setdefault("csv_path", tiny_csv)
        return recipe_dict(kw.pop("out"), kw.pop("model_dir"), kw.pop("csv_path"), **kw)

    return factory


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[[dict[str, Any], str], Path]:
    """Write a recipe dict as YAML under tmp_path; returns the path."""
    import yaml

    def writer(data: dict[str, Any], filename: str = "recipe.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return writer
