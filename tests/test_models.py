"""Model wrapper behaviour that every later stage relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quant_workbench.config.recipe import ModelSpec
from quant_workbench.models.loading import load_model, to_torch, tokenize


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


def test_half_precision_checkpoint_loads_as_float32(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """transformers 5 keeps a checkpoint's fp16 dtype by default; the workbench's float baseline (and
    fine-tuning) must be float32, or fp16 training diverges and "float" is half precision."""
    import shutil

    from transformers import AutoModel

    half_dir = tmp_path / "half"
    shutil.copytree(tiny_bert_dir, half_dir)
    AutoModel.from_pretrained(str(tiny_bert_dir)).half().save_pretrained(str(half_dir))
    loaded = load_model(ModelSpec(source=str(half_dir), task="embedding", max_seq_length=16))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    reference = AutoModel.from_pretrained(str(half_dir), dtype=torch.float32)
    assert torch.equal(loaded.model.hf.get_parameter("embeddings.word_embeddings.weight"), reference.embeddings.word_embeddings.weight)
    feed = to_torch(tokenize(loaded.tokenizer, ["a short text", "another one"], 16, loaded.input_names))
    with torch.no_grad():
        out = loaded.model(**feed)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
