"""FP8 and SmoothQuant as dimensions of the search space: Optuna parameters round-trip to
configurations, the study starts from every format's all-quantized point, a SmoothQuant alpha costs
one extra (cached) calibration pass, and on a model with one huge activation outlier the search finds
that FP8 keeps the accuracy INT8 loses, selects it and reports every format on the Pareto report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from tiny_fixtures import recipe_dict

from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.config.search import SearchSpec
from quant_workbench.core.errors import RecipeError
from quant_workbench.pipeline.run import execute, run_dir_for
from quant_workbench.search.groups import LayerGroup
from quant_workbench.search.sensitivity import Config
from quant_workbench.search.study import config_params, resolved_recipe, suggest

QUIET: dict[str, Any] = {"progress": False, "say": lambda s: None}


def _groups() -> list[LayerGroup]:
    return [LayerGroup("layer0", "layer", ("encoder.layer.0.attention.self.query",)), LayerGroup("ffn-out", "kind", ("encoder.layer.0.output.dense",))]


@pytest.mark.parametrize(
    "config",
    [
        Config("max"),
        Config("mse", float_groups=("ffn-out",), alpha=0.5),
        Config("percentile", 99.9, format="fp8"),
        Config("entropy", alpha=0.8),
    ],
    ids=lambda c: c.label(),
)
def test_parameters_round_trip_to_the_configuration(config: Config) -> None:
    spec = SearchSpec(methods=["max", "percentile", "entropy", "mse"], percentiles=[99.9, 99.99], formats=["int8", "fp8"], smoothquant_alphas=[0.5, 0.8])
    params = config_params(config, _groups(), spec)
    assert suggest(optuna.trial.FixedTrial(params), spec, _groups()) == config


def test_sampled_configurations_respect_the_space() -> None:
    spec = SearchSpec(methods=["entropy", "max"], formats=["int8", "fp8"], smoothquant_alphas=[0.5])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        config = suggest(study.ask(), spec, _groups())
        seen.add((config.format, config.alpha, config.method))
        if config.format == "fp8":
            assert config.alpha is None and config.method != "entropy"  # no SmoothQuant or KL calibration for FP8
    assert {("fp8", None, "max"), ("int8", 0.5, "entropy"), ("int8", None, "max")} <= seen


def test_space_errors_are_recipe_errors(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["search"] = {"formats": ["int8", "fp8"]}
    with pytest.raises(RecipeError, match=r"search.formats has fp8.*export.opset >= 19"):
        recipe_from_dict(data)
    data["export"]["opset"] = 19
    data["search"] = {"formats": ["fp8"]}
    with pytest.raises(RecipeError, match="must include int8"):
        recipe_from_dict(data)
    data["search"] = {"formats": ["int8", "fp8"], "methods": ["entropy"]}
    with pytest.raises(RecipeError, match="only entropy"):
        recipe_from_dict(data)
    data["search"] = {"smoothquant_alphas": [1.5]}
    with pytest.raises(RecipeError, match=r"\[0, 1\]"):
        recipe_from_dict(data)


def test_resolved_recipe_of_an_fp8_trial_reruns_as_a_plain_recipe(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    from quant_workbench.search.sensitivity import TrialRecord

    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["export"]["opset"] = 19
    data["search"] = {"formats": ["int8", "fp8"], "smoothquant_alphas": [0.5]}
    recipe = recipe_from_dict(data)
    fp8 = resolved_recipe(recipe, Config("max", format="fp8"), TrialRecord("study", Config("max", format="fp8")))
    assert recipe_from_dict(fp8).quantization.schemes == ["fp8"]
    sq = resolved_recipe(recipe, Config("mse", alpha=0.5), TrialRecord("study", Config("mse", alpha=0.5)))
    again = recipe_from_dict(sq)
    assert again.quantization.schemes == ["int8-smoothquant"] and again.quantization.smoothquant is not None
    assert again.quantization.smoothquant.alphas == [0.5] and again.search is None


def test_fp8_survives_the_outlier_that_breaks_int8_and_is_selected(tmp_path: Path, broken_bert_dir: Path, tiny_csv: Path) -> None:
    data = recipe_dict(tmp_path, broken_bert_dir, tiny_csv)
    data["export"]["opset"] = 19
    data["benchmark"] = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iterations": 2, "threads": 1}
    data["search"] = {
        "methods": ["max"],
        "formats": ["int8", "fp8"],
        "smoothquant_alphas": [0.5],
        "groups": ["kind"],
        "sensitivity": False,
        "fallback": False,
        "criterion": {"absolute": 0.02},
        "latency": {"batch_size": 1, "seq_length": 16, "warmup": 1, "iterations": 2},
        "max_trials": 3,  # exactly the enqueued starting points: all-INT8, all-FP8, all-INT8 + SmoothQuant 0.5
    }
    recipe = recipe_from_dict(data)
    result = execute(recipe, **QUIET)
    run_dir = run_dir_for(recipe)
    s = json.loads((run_dir / "search.json").read_text())

    by_scheme = {(r["config"]["format"], r["config"]["alpha"]): r for r in s["records"] if r["source"] == "study"}
    assert set(by_scheme) == {("int8", None), ("fp8", None), ("int8", 0.5)}
    int8, fp8 = by_scheme[("int8", None)], by_scheme[("fp8", None)]
    assert all(r["status"] == "ok" for r in by_scheme.values()), [r["error"] for r in by_scheme.values()]
    # the outlier (amax ~500) leaves INT8 a step of ~4 and rounds the other channels away; E4M3 keeps 3 mantissa bits at every scale
    assert fp8["accuracy"] >= s["threshold"] > int8["accuracy"]
    assert s["selected"]["config"]["format"] == "fp8" and s["selected_meets"]
    assert result.best_variant == "fp8-search"
    assert next(v for v in result.variants if v.name == "fp8-search").precision == "fp8"
    assert json.loads((run_dir / "best" / "config.json").read_text())["config"]["format"] == "fp8"
    # the base statistics plus one pass for the SmoothQuant alpha (its model's activations differ)
    assert s["calibration_passes"] == 2
    scales = json.loads((run_dir / by_scheme[("int8", 0.5)]["artifacts"]["scales"]).read_text())
    assert scales["smoothquant_alpha"] == 0.5
    md = (run_dir / "report.md").read_text()
    assert "| FP8 E4M3 |" in md and "| INT8 + SmoothQuant 0.5 |" in md and "Best configuration of each format" in md
    assert "formats int8, fp8; SmoothQuant alphas 0.5" in md


def test_the_same_gates_for_the_search_smoothquant_trials_and_its_variants(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SmoothQuant trial whose rewrite is not exact in float fails (the PTQ schemes' gate, not skipped), and a
    configuration the search hands to the run that fails the full Q/DQ check is removed, saying why."""
    import quant_workbench.quantize.schemes as formats_mod
    import quant_workbench.search.sensitivity as sens_mod
    from quant_workbench.core.errors import ExportError

    real = formats_mod.checked_smoothquant

    def inexact(*a: Any, **kw: Any) -> Any:
        state, check = real(*a, **kw)
        return state, {**check, "float_max_abs_diff": 0.25, "passed": False}

    def failing_check(self: Any, config: Any, rec: Any) -> Any:
        raise ExportError(f"Q/DQ ONNX {rec.key}.qdq.onnx disagrees with the fake-quant model (simulated)")

    monkeypatch.setattr(formats_mod, "checked_smoothquant", inexact)
    monkeypatch.setattr(sens_mod.TrialRunner, "check", failing_check)
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["benchmark"] = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iterations": 2, "threads": 1}
    data["search"] = {
        "methods": ["max"], "smoothquant_alphas": [0.5], "groups": ["kind"], "sensitivity": False, "fallback": False,
        "criterion": {"absolute": 0.5}, "latency": {"batch_size": 1, "seq_length": 16, "warmup": 1, "iterations": 2}, "max_trials": 2,
    }
    recipe = recipe_from_dict(data)
    result = execute(recipe, **QUIET)
    s = json.loads((run_dir_for(recipe) / "search.json").read_text())
    smooth = [r for r in s["records"] if r["config"]["alpha"] == 0.5]
    assert smooth and all(r["status"] == "failed" for r in smooth)
    assert "SmoothQuant (alpha 0.5) changed the float model's outputs by 0.25" in smooth[0]["error"]
    for name in ("int8-max", "int8-search"):
        v = result.variant(name)
        assert v is not None and v.status == "failed" and "failed its fidelity gate" in (v.error or "") and "simulated" in (v.error or "")
    assert result.best_variant is None  # no candidate passed its gates
