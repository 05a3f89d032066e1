"""docs/extending.md's worked examples, run as written: every ```python example block of the page is saved as
the file it names, a recipe lists them in `extensions`, then a tiny random model of the new family is quantized
with the new calibration method and run on the new engine."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tiny_fixtures import TINY_MAX_POSITIONS, TINY_SEQ, VOCAB, make_rows, save_tiny_tokenizer

from quant_workbench.config.catalog import CALIBRATORS, ENGINES, SCHEMES
from quant_workbench.config.recipe import ModelSpec, QuantSpec, Recipe, recipe_from_dict
from quant_workbench.core.errors import RecipeError
from quant_workbench.quantize.architectures.registry import unregister
from quant_workbench.quantize.methods import AMAX_METHODS
from quant_workbench.runtime.base import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python example (\S+)\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(encoding="utf-8"), re.S)


@pytest.fixture
def extensions(tmp_path: Path) -> Iterator[list[str]]:
    """The page's examples saved as the files they name (a recipe's `extensions`), removed again afterwards."""
    folder = tmp_path / "extensions"
    folder.mkdir()
    for name, code in EXAMPLES:
        (folder / name).write_text(code, encoding="utf-8")
    files = [str((folder / name).resolve()) for name, _ in EXAMPLES]
    try:
        yield files  # loaded by the first recipe that lists them
    finally:
        modules = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) in files]
        CALIBRATORS.unregister("half-max")
        AMAX_METHODS.unregister("half-max")
        SCHEMES.unregister("fp8-unclipped")
        ENGINES.unregister("onnxruntime-1t")
        BACKENDS.unregister("onnxruntime-1t")
        for module in modules:
            if hasattr(module, "Ernie"):
                unregister(module.Ernie)
            sys.modules.pop(module.__name__, None)


def _recipe(overrides: list[str], extensions: list[str] | None = None) -> Recipe:
    data: dict[str, Any] = yaml.safe_load((ROOT / "recipes" / "bert_int8.yaml").read_text(encoding="utf-8"))
    data["quantization"].pop("smoothquant", None)
    if extensions is not None:
        data["extensions"] = extensions
    return recipe_from_dict(data, overrides)


USES_THEM = [
    "quantization.compare=[int8, fp8-unclipped]", "quantization.calibration.methods=[max, half-max]", "export.opset=19",
    "engine.runtime=onnxruntime-1t", "engine.runtimes=null", "references=[]",
]


def test_the_page_has_one_example_file_per_extension_point() -> None:
    assert [name for name, _ in EXAMPLES] == ["half_max.py", "fp8_unclipped.py", "onnxruntime_1t.py", "ernie.py"]


def test_a_recipe_listing_the_files_uses_the_declared_method_format_and_engine(extensions: list[str]) -> None:
    from quant_workbench.quantize.schemes import expand_schemes

    recipe = _recipe(USES_THEM, extensions)
    assert recipe.extensions == extensions
    assert recipe.quantization.calibration.methods == ["max", "half-max"]
    assert recipe.engine.runtime == "onnxruntime-1t"
    assert [s.prefix for s in expand_schemes(recipe.quantization)] == ["int8", "fp8-unclipped"]
    with pytest.raises(RecipeError, match="clips outliers FP8's range can hold"):
        _recipe([*USES_THEM[:1], "quantization.calibration.methods=[max, mse]", *USES_THEM[2:]], extensions)
    with pytest.raises(RecipeError, match="export.opset >= 19"):
        _recipe([*USES_THEM[:2], "export.opset=18", *USES_THEM[3:]], extensions)


def test_the_page_s_recipe_excerpt_validates_with_the_files_beside_it(extensions: list[str]) -> None:
    excerpt = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(encoding="utf-8"), re.S)[0])
    data: dict[str, Any] = yaml.safe_load((ROOT / "recipes" / "bert_int8.yaml").read_text(encoding="utf-8"))
    data["quantization"].pop("smoothquant", None)
    for key, value in excerpt.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    recipe = recipe_from_dict(data, base_dir=Path(extensions[0]).parent)  # the names are relative to the recipe's folder
    assert recipe.extensions == extensions
    assert (recipe.quantization.compare, recipe.quantization.calibration.methods, recipe.engine.runtime) == (
        ["int8", "fp8-unclipped"], ["max", "half-max"], "onnxruntime-1t",
    )
    assert recipe.reference_kinds == []  # the standard tools' rows belong to the engine named onnxruntime


def test_nothing_is_declared_without_the_files() -> None:
    with pytest.raises(RecipeError, match="half-max"):
        _recipe(USES_THEM)


def _tiny_ernie(folder: Path) -> Path:
    from transformers import AutoModel, ErnieConfig

    config = ErnieConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=len(VOCAB),
        max_position_embeddings=TINY_MAX_POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).eval().save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    return folder


def test_a_model_of_the_new_family_is_quantized_with_the_new_method_and_run_on_the_new_engine(
    extensions: list[str], tmp_path: Path
) -> None:
    recipe = _recipe(USES_THEM, extensions)  # what declares the family, the method and the engine
    from quant_workbench.export.qdq import export_onnx
    from quant_workbench.models.loading import load_model, to_torch, tokenize
    from quant_workbench.quantize.apply import calibrate, prepare, set_scales
    from quant_workbench.quantize.plan import build_plan
    from quant_workbench.runtime import EngineFromOnnx
    from quant_workbench.runtime.onnxruntime import OrtEngine

    loaded = load_model(ModelSpec(source=str(_tiny_ernie(tmp_path / "ernie")), max_seq_length=TINY_SEQ))
    assert loaded.architecture.name == "ERNIE"
    plan = build_plan(loaded.model.hf, QuantSpec())
    assert sum(p.enabled and p.kind == "linear" for p in plan.points) == 2 * 6  # Q, K, V, attention out, FFN in, FFN out
    prepare(loaded.model.hf, plan)
    texts = [t for t, _ in make_rows()]

    def feed(batch: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(loaded.tokenizer, batch, TINY_SEQ, loaded.input_names))

    def loop(model: torch.nn.Module) -> None:
        for start in range(0, 32, 16):
            model(**feed(texts[start : start + 16]))

    calibrators = calibrate(loaded.model, loop)
    full = set_scales(loaded.model, calibrators, "max")
    half = set_scales(loaded.model, calibrators, "half-max")
    assert half and all(half[name] == pytest.approx(full[name] / 2) for name in half)

    path = export_onnx(loaded.model, tmp_path / "ernie.qdq.onnx", feed(texts[200:208]), loaded.input_names, loaded.output_name, 18)
    inputs = {k: v.numpy() for k, v in feed(texts[200:208]).items()}
    with EngineFromOnnx(path, recipe, "int8-half-max", "int8") as engine, OrtEngine(path, recipe.engine) as reference:
        assert isinstance(engine, OrtEngine) and engine.session.get_session_options().intra_op_num_threads == 1
        np.testing.assert_allclose(engine(inputs), reference(inputs), atol=1e-5)
