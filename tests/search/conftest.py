"""Fixtures of the search tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_fixtures import save_tiny_tokenizer


@pytest.fixture(scope="session")
def broken_bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """The tiny BERT with one huge activation outlier at the input of layer 1's FFN-out Linear.

    Neuron 0 of layer 1's FFN-in gets bias 500 (GELU passes it: a constant outlier channel) and the
    FFN-out weight column that reads it is zeroed, so the float model ignores it; the FFN-out weights
    are scaled up so that its output matters. Max calibration of that Linear's input then gets amax
    ~500 and rounds every other channel to zero: quantizing this one op destroys the output.
    """
    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertLayer

    folder = tmp_path_factory.mktemp("broken_bert")
    model = BertModel.from_pretrained(str(tiny_bert_dir))
    layer = model.encoder.layer[1]
    assert isinstance(layer, BertLayer)
    with torch.no_grad():
        layer.intermediate.dense.bias[0] = 500.0
        layer.output.dense.weight.mul_(500.0)
        layer.output.dense.weight[:, 0] = 0.0
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder
