"""Layer groups, fallback overrides, the `search` recipe section, Pareto front and selection (no export)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.core.errors import RecipeError
from quant_workbench.models.loading import load_model
from quant_workbench.quantize.apply import apply_flags, prepare, quantizers
from quant_workbench.quantize.plan import build_plan
from quant_workbench.search.groups import build_groups, only_groups, with_fallback
from quant_workbench.search.sensitivity import Config, TrialRecord
from quant_workbench.search.study import pareto_front, select


def _plan(make_recipe: Callable[..., dict[str, Any]], **quant: Any) -> Any:
    data = make_recipe()
    data["quantization"].update(quant)
    recipe = recipe_from_dict(data)
    loaded = load_model(recipe.model)
    return recipe, loaded, build_plan(loaded.model.hf, recipe.quantization)


def test_groups_per_layer_and_kind(make_recipe: Callable[..., dict[str, Any]]) -> None:
    _, _, plan = _plan(make_recipe, quantize_attention_matmuls=True, quantize_residual_adds=True)
    groups = {g.name: g for g in build_groups(plan, ["layer", "kind"])}
    assert list(groups) == [
        "layer0", "layer1", "attention-qkv", "attention-output", "ffn-in", "ffn-out", "attention-matmuls", "residual-adds",
    ]
    assert groups["ffn-out"].modules == ("encoder.layer.0.output.dense", "encoder.layer.1.output.dense")
    assert groups["attention-output"].modules == ("encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense")
    assert "encoder.layer.1.attention.self.query" in groups["layer1"].modules
    assert all(".layer.0." in m for m in groups["layer0"].modules)
    assert len(groups["attention-qkv"].modules) == 6
    # every enabled point is in exactly one layer group
    assert sorted(groups["layer0"].modules + groups["layer1"].modules) == sorted(p.module for p in plan.enabled)


def test_groups_skip_points_the_recipe_keeps_float(make_recipe: Callable[..., dict[str, Any]]) -> None:
    _, _, plan = _plan(make_recipe)  # attention matmuls / residual adds off by default
    names = [g.name for g in build_groups(plan, ["kind"])]
    assert names == ["attention-qkv", "attention-output", "ffn-in", "ffn-out"]


def test_fallback_override_and_only(make_recipe: Callable[..., dict[str, Any]]) -> None:
    _, loaded, plan = _plan(make_recipe)
    groups = build_groups(plan, ["layer", "kind"])
    fb = with_fallback(plan, groups, ["ffn-out", "layer1"])
    off = {p.module: p.reason for p in fb.points if p.enabled != next(q for q in plan.points if q.module == p.module).enabled}
    assert off["encoder.layer.0.output.dense"] == "fallback: ffn-out"
    assert off["encoder.layer.1.attention.self.query"] == "fallback: layer1"
    assert len(fb.enabled) == len(plan.enabled) - 7
    only = only_groups(plan, groups, ["ffn-out"])  # overlapping layer groups must not switch it off
    assert [p.module for p in only.enabled] == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert fb.layout() == plan.layout()  # same calibration cache key
    with pytest.raises(KeyError, match="unknown layer group"):
        with_fallback(plan, groups, ["layer9"])
    prepare(loaded.model.hf, plan)
    apply_flags(loaded.model.hf, only)
    on = sorted({n.rsplit(".", 1)[0] for n, q in quantizers(loaded.model.hf).items() if q.enabled})
    assert on == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]


def test_search_section_validation(make_recipe: Callable[..., dict[str, Any]]) -> None:
    data = make_recipe()
    data["search"] = {"criterion": {"relative": 0.01, "absolute": 0.005}}
    with pytest.raises(RecipeError, match="exactly one"):
        recipe_from_dict(data)
    data["search"] = {"criteria": {}}
    with pytest.raises(RecipeError, match="criterion"):
        recipe_from_dict(data)
    data["search"] = {"latency": {"seq_length": 4096}}
    with pytest.raises(RecipeError, match="max_seq_length"):
        recipe_from_dict(data)
    data["search"] = {"criterion": {"absolute": 0.005}, "methods": ["mse"], "max_trials": 3}
    spec = recipe_from_dict(data).search
    assert spec is not None and spec.criterion.threshold(0.8) == pytest.approx(0.795)
    assert spec.method_for_analysis == "mse"


def test_run_hash_ignores_storage_and_absent_search(make_recipe: Callable[..., dict[str, Any]]) -> None:
    from quant_workbench.pipeline.run import recipe_hash

    data = make_recipe()
    plain = recipe_hash(recipe_from_dict(data))
    data["search"] = {"max_trials": 3}
    a = recipe_hash(recipe_from_dict(data))
    data["search"]["storage"] = "postgresql://u@h/db"
    assert recipe_hash(recipe_from_dict(data)) == a != plain


def _rec(acc: float, ms: float, key: str) -> TrialRecord:
    return TrialRecord(source="study", config=Config("max"), accuracy=acc, p50_ms=ms, float_p50_ms=20.0, key=key)


def test_pareto_and_selection() -> None:
    recs = [_rec(0.80, 10.0, "a"), _rec(0.79, 5.0, "b"), _rec(0.70, 4.0, "c"), _rec(0.78, 6.0, "d"), _rec(0.80, 12.0, "e")]
    front = pareto_front([(r.accuracy or 0.0, r.relative_latency or 0.0) for r in recs])
    assert [recs[i].key for i in front] == ["c", "b", "a"]
    assert recs[1].relative_latency == pytest.approx(0.25)
    best, meets = select(recs, threshold=0.785)
    assert best is not None and best.key == "b" and meets
    best, meets = select(recs, threshold=0.9)  # none meets: the most accurate (then fastest) is kept
    assert best is not None and best.key == "a" and not meets


def test_cli_storage_needs_search(write_recipe: Callable[..., Path], make_recipe: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    from quant_workbench.cli import main

    assert main([str(write_recipe(make_recipe())), "--storage", "sqlite:///x.db", "--dry-run"]) == 2
    assert "search section" in capsys.readouterr().err
