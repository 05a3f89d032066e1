"""Model wrapper behaviour that every later stage relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quant_workbench.models import load_model, to_torch, tokenize
from quant_workbench.recipe import ModelSpec


@pytest.mark.parametrize("task", ["embedding", "sequence-classification"])
def test_padding_does_not_change_outputs(task: str, tiny_bert_dir: Path, tiny_classifier_dir: Path) -> None:
    """A text alone and the same text padded inside a batch give the same output: the attention mask
    must reach our attention function (transformers 5 builds it only for registered mask functions)."""
    folder = tiny_bert_dir if task == "embedding" else tiny_classifier_dir
    loaded = load_model(ModelSpec(source=str(folder), task=task, max_seq_length=32), num_labels=3 if task != "embedding" else None)
    short, long = "good happy", "good happy " + " ".join(["table"] * 20)
    alone = tokenize(loaded.tokenizer, [short], 32, loaded.input_names)
    batch = tokenize(loaded.tokenizer, [short, long], 32, loaded.input_names)
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        a = loaded.model(**to_torch(alone)).numpy()[0]
        b = loaded.model(**to_torch(batch)).numpy()[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
