"""Deployment fixtures: a finished run of the tiny random BERT (tests/conftest.py's model and CSV)
whose recipe has a `deploy:` section, so the run itself writes the Triton repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_fixtures import recipe_dict

# Mixed lengths, unknown words ([UNK]), repeated words, punctuation, non-ASCII, and one text longer
# than max_seq_length (truncated).
TEXTS = [
    "good",
    "bad awful sad",
    "the meeting report was great fun and the train was nice",
    "zorblax quux",
    "love love love hate",
    "café naïve — ünïcödé 😀",
    "table chair window paper road " * 12,
    "joy",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: starts a real tritonserver (the nvidia-pytriton wheel's)")


def deploy_recipe_dict(out: Path, model_dir: Path, csv_path: Path, task: str = "embedding", name: str = "tiny_deploy") -> dict[str, Any]:
    """tiny_fixtures.recipe_dict with fewer texts, no benchmark and a `deploy:` section."""
    data = recipe_dict(out, model_dir, csv_path, task=task, name=name)
    data["data"].update(probe_samples=60, eval_samples=30)
    data["benchmark"] = {"enabled": False, "batch_sizes": [1], "seq_lengths": [16]}
    data["deploy"] = {
        "targets": ["python-onnxruntime", "onnxruntime"],
        "max_batch_size": 8,
        "preferred_batch_sizes": [4, 8],
        # long enough that concurrent single-text requests are batched together in the tests
        "max_queue_delay_microseconds": 20000,
        "instance_kind": "cpu",
    }
    return data



def _run(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, csv_path: Path, task: str) -> Path:
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient) is not installed")
    from quant_workbench.config.recipe import recipe_from_dict
    from quant_workbench.pipeline.run import execute

    out = tmp_path_factory.mktemp(f"deploy_{task}")
    recipe = recipe_from_dict(deploy_recipe_dict(out, model_dir, csv_path, task=task, name=f"tiny_{task.replace('-', '_')}"))
    result = execute(recipe, progress=False, say=lambda _: None)
    assert result.best_variant == "int8-max"
    from quant_workbench.pipeline.run import run_dir_for

    return run_dir_for(recipe)


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_csv: Path) -> Path:
    """Run folder of the tiny embedding model (float + int8-max), with its Triton repository in triton/."""
    return _run(tmp_path_factory, tiny_bert_dir, tiny_csv, "embedding")


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, tiny_csv: Path) -> Path:
    """Run folder of the tiny 3-label classifier, with its Triton repository in triton/."""
    return _run(tmp_path_factory, tiny_classifier_dir, tiny_csv, "sequence-classification")


def reference_outputs(run_dir: Path, variant: str, texts: list[str]) -> Any:
    """The workbench's own answer: its tokenizer and its ONNX Runtime engine on the variant's ONNX file."""
    import numpy as np
    from transformers import AutoTokenizer

    from quant_workbench.config.recipe import load_recipe
    from quant_workbench.models.loading import tokenize
    from quant_workbench.runtime.onnxruntime import OrtEngine

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    tok = AutoTokenizer.from_pretrained(recipe.model.location)
    onnx = run_dir / "models" / ("float.onnx" if variant == "float" else f"{variant}.qdq.onnx")
    with OrtEngine(onnx, recipe.engine, variant) as eng:
        rows = [eng(tokenize(tok, [t], recipe.model.max_seq_length, eng.input_names)) for t in texts]
    return np.concatenate(rows)
