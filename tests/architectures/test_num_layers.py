"""`model.num_layers`: the first N encoder blocks of any registered architecture, identical to a model saved
with N layers, part of the model fingerprint and the run hash, and refused when N exceeds the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows

from architectures.tiny_architectures import CONFIGS, save_tiny_architecture
from quant_workbench.config.recipe import ModelSpec, recipe_from_dict
from quant_workbench.core.errors import ModelError
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.pipeline.run import recipe_hash

TEXTS = [t for t, _ in make_rows(6)]


def _embed(loaded: LoadedModel) -> torch.Tensor:
    feed = to_torch(tokenize(loaded.tokenizer, TEXTS, TINY_SEQ, loaded.input_names))
    with torch.no_grad():
        out: torch.Tensor = loaded.model(**feed)
    return out


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_first_layers_equal_a_model_saved_with_that_many(model_type: str, tmp_path: Path) -> None:
    full = save_tiny_architecture(model_type, tmp_path / "full", num_hidden_layers=3)
    # the reference: the same weights with config.json saying 2 layers (transformers loads the first 2 blocks)
    shallow = tmp_path / "shallow"
    shutil.copytree(full, shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["n_layers" if "n_layers" in config else "num_hidden_layers"] = 2
    (shallow / "config.json").write_text(json.dumps(config))

    truncated = load_model(ModelSpec(source=str(full), max_seq_length=TINY_SEQ, num_layers=2))
    reference = load_model(ModelSpec(source=str(shallow), max_seq_length=TINY_SEQ))
    whole = load_model(ModelSpec(source=str(full), max_seq_length=TINY_SEQ))

    assert len(truncated.architecture.blocks(truncated.model.hf)) == 2
    assert len(whole.architecture.blocks(whole.model.hf)) == 3
    assert cast(Any, truncated.model.hf).config.num_hidden_layers == 2  # what an exported config.json would say
    torch.testing.assert_close(_embed(truncated), _embed(reference), rtol=0, atol=1e-6)
    assert not torch.allclose(_embed(truncated), _embed(whole), atol=1e-4)  # the dropped block mattered
    assert truncated.fingerprint != whole.fingerprint  # caches keyed by the model never mix the two


def test_more_layers_than_the_model_has_is_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"model.num_layers=3 exceeds the 2 encoder blocks.*from 1 to 2"):
        load_model(ModelSpec(source=str(tiny_bert_dir), max_seq_length=TINY_SEQ, num_layers=3))


def test_num_layers_enters_the_run_hash_only_when_set(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    from tiny_fixtures import recipe_dict

    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    plain = recipe_from_dict(data)
    assert "num_layers" not in plain.model_dump()["model"]  # recipes without it keep their run ids and caches
    assert recipe_hash(recipe_from_dict(data, ["model.num_layers=null"])) == recipe_hash(plain)
    assert recipe_hash(recipe_from_dict(data, ["model.num_layers=1"])) != recipe_hash(plain)
    assert recipe_from_dict(data, ["model.num_layers=1"]).model.num_layers == 1
