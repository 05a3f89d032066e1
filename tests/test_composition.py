"""Recipe sections compose (issue 11): search + QAT + compare + references + deploy in one run, the
combinations that cannot work rejected at load, and the search criterion deciding among every variant."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.core.errors import RecipeError
from quant_workbench.core.results import LatencyStats, VariantResult
from quant_workbench.selection import select_variant

FAST_LATENCY = {"batch_size": 1, "seq_length": 16, "warmup": 1, "iterations": 2}


def _everything(data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    ckpt = str(tmp_path / "checkpoints")
    data["data"].update(probe_samples=120, validation_samples=30, eval_samples=60)
    data["quantization"]["compare"] = ["int8", "int8-dynamic"]
    data["quantization"]["calibration"]["methods"] = ["max", "mse"]
    data["qat"] = {"max_steps": 4, "batch_size": 16, "eval_every": 2, "checkpoint_dir": ckpt, "learn_amax": False}
    data["search"] = {
        "methods": ["max", "percentile"], "percentiles": [99.9], "groups": ["layer"], "latency": FAST_LATENCY,
        "sensitivity": False, "fallback": False, "max_trials": 3, "sampler": "random", "criterion": {"absolute": 0.5},
    }
    data["benchmark"] = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iterations": 3, "threads": 1, "speedup_tolerance": None}
    data["deploy"] = {"targets": ["python-onnxruntime"], "max_batch_size": 4, "preferred_batch_sizes": [2, 4], "instance_kind": "cpu"}
    return data


def test_search_qat_compare_references_and_deploy_in_one_run(
    tmp_path: Path, make_recipe: Callable[..., dict[str, Any]], tiny_classifier_dir: Path
) -> None:
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient) is not installed")
    from quant_workbench.deploy import deploy_run
    from quant_workbench.pipeline.run import execute, run_dir_for

    data = _everything(make_recipe(model_dir=tiny_classifier_dir, task="sequence-classification", name="everything"), tmp_path)
    recipe = recipe_from_dict(data)
    result = execute(recipe, progress=False, say=lambda _: None)
    run_dir = run_dir_for(recipe)

    names = [v.name for v in result.variants]
    # PTQ schemes (compare x methods), the search's baseline and choice, QAT, then the standard tools' rows
    assert names[:4] == ["float", "int8-max", "int8-mse", "int8-dynamic"]
    assert names[4] == "int8-search" and names[5] == "int8-qat"
    assert names[6:] == ["ref:ort-float", "ref:ort-dynamic", "ref:ort-static"]
    assert names.count("int8-max") == 1  # the search's all-INT8 max baseline is the PTQ scheme's int8-max
    failed = {v.name: v.error for v in result.variants if v.status != "ok"}
    assert not failed, failed
    assert all(v.metrics.get("accuracy") is not None for v in result.variants)
    assert all(v.latency for v in result.variants)

    # the search's results live in RunResult: report.json and report.md carry them with everything else
    assert result.search is not None and result.search["selected_variant"] == "int8-search"
    assert "selected_meets_at_lower_bound" in result.search
    stored = json.loads((run_dir / "report.json").read_text())
    assert stored["search"]["selected_variant"] == "int8-search" and stored["schema_version"] == 4
    assert json.loads((run_dir / "search.json").read_text())["final_threshold"] == result.selection["threshold"]
    md = (run_dir / "report.md").read_text()
    for section in ("## Search", "## Training: qat", "## Against the standard tools", "int8-dynamic", "int8-qat", "## Triton model repository"):
        assert section in md, section
    # one rule: the search criterion is its accuracy margin, among every candidate (not only the search's own choice)
    assert result.selection["criterion"] == recipe.search.criterion.describe()  # type: ignore[union-attr]
    assert set(result.selection["meeting"]) <= {"int8-max", "int8-mse", "int8-dynamic", "int8-search", "int8-qat"}
    assert result.best_variant in result.selection["meeting"]
    assert result.selection["accuracy_margin"] == 0.5 and "search criterion" in result.selection["margin_source"]
    assert [d["split"] for d in result.evaluation["decisions"]] == ["selection", "evaluation"]  # the search chose on its own split
    # the deploy section ran as the last stage
    assert (run_dir / "triton").is_dir() and stored["deployment"]["triton"]["models"]

    # deploying again later re-renders the report from report.json alone: the Search section stays
    deploy_run(run_dir, tmp_path / "triton-again", build_engines=False, say=lambda _: None)
    md_again = (run_dir / "report.md").read_text()
    assert "## Search" in md_again and "## Training: qat" in md_again
    assert json.loads((run_dir / "report.json").read_text())["search"] == stored["search"]


@pytest.mark.parametrize(
    ("quantization", "needle"),
    [
        ({"format": "fp8"}, "quantization.format 'fp8' would not be used"),
        ({"smoothquant": {"alpha": 0.5}}, "quantization.smoothquant would not be used"),
    ],
)
def test_search_with_a_format_it_would_ignore_is_rejected_at_load(
    make_recipe: Callable[..., dict[str, Any]], quantization: dict[str, Any], needle: str
) -> None:
    data = make_recipe()
    data["quantization"].update(quantization)
    data["export"]["opset"] = 19
    data["search"] = {"methods": ["max"], "latency": FAST_LATENCY}
    with pytest.raises(RecipeError, match=needle) as info:
        recipe_from_dict(data)
    assert "quantization.compare" in str(info.value)  # the message says how to keep both
    data["quantization"]["compare"] = ["int8", "fp8"] if "format" in quantization else ["int8", "int8-smoothquant"]
    data["quantization"].pop("format", None)
    assert recipe_from_dict(data).quantization.compare  # with compare it composes


# ---------------------------------------------------------------------------------------------
# the search criterion as the run's selection rule


def _lat(ms: float, rounds: int = 40, jitter: float = 0.01, seed: int = 0) -> LatencyStats:
    load = np.random.default_rng(0).uniform(1.0, 1.4, rounds)  # shared per-round machine load
    own = 1.0 + jitter * np.random.default_rng(seed + 1).standard_normal(rounds)
    samples = [float(x) for x in ms * load * own]
    return LatencyStats(8, 128, rounds, float(np.median(samples)), 0.0, 0.0, 0.0, 0.0, samples_ms=samples)


N = 4000


def _correct(gain: int, lose: int, offset: int = 0) -> np.ndarray:
    """Per-example correctness: float's (80 %) with `gain` examples won and `lose` lost."""
    base = np.zeros(N, dtype=bool)
    base[np.random.default_rng(2).permutation(N)[:3200]] = True
    out = base.copy()
    out[np.flatnonzero(~base)[offset : offset + gain]] = True
    out[np.flatnonzero(base)[offset : offset + lose]] = False
    return out


def _v(name: str, correct: np.ndarray, ms: float, *, seed: int = 0, agreement: float = 0.9, precision: str = "int8", reference: bool = False) -> VariantResult:
    return VariantResult(
        name=name, precision=precision,  # type: ignore[arg-type]
        metrics={"accuracy": float(correct.mean()), "agreement": agreement}, latency=[_lat(ms, seed=seed)], reference=reference,
    )


def _select(rows: list[tuple[str, np.ndarray, float, dict[str, Any]]], margin: float = 0.01, **kw: Any) -> Any:
    variants = [_v(name, c, ms, seed=i, **extra) for i, (name, c, ms, extra) in enumerate(rows)]
    return select_variant(
        variants, {name: c for name, c, _, _ in rows}, accuracy_margin=margin, margin_source="search criterion", criterion="drop <= 0.01", **kw,
    )


def test_with_a_search_the_criterion_is_the_margin_of_the_same_rule() -> None:
    base = _correct(0, 0)
    sel = _select([
        ("float", base, 20.0, {"precision": "float32"}),
        ("int8-qat", _correct(20, 10), 12.0, {}),  # most accurate, 30 % slower than int8-search: beyond the speed margin
        ("int8-search", _correct(10, 12, offset=100), 8.0, {}),  # non-inferior at 1 pt, fastest of those
        ("int8-max", _correct(10, 200, offset=300), 6.0, {}),  # fastest, 4.75 pt worse: inferior
        ("ref:ort-dynamic", base, 5.0, {"reference": True}),  # never a candidate
    ], prefer="int8-search")
    assert sel.acceptable == ["int8-qat", "int8-search"] and sel.inferior == ["int8-max"]
    assert sel.winner == "int8-search" and sel.fastest == "int8-search"
    assert sel.criterion == "drop <= 0.01" and sel.threshold == pytest.approx(0.8 - 0.01)
    assert sel.to_dict()["meeting"] == ["int8-qat", "int8-search"] and "search criterion" in sel.rule


def test_equally_fast_candidates_go_to_the_more_accurate_then_the_search_choice_then_the_name() -> None:
    base = _correct(0, 0)
    tied = _select([("float", base, 20.0, {"precision": "float32"}), ("int8-a", _correct(5, 10), 8.0, {}), ("int8-b", _correct(9, 10, offset=50), 8.0, {})])
    assert tied.winner == "int8-b"
    same = _correct(5, 10)
    rows: list[tuple[str, np.ndarray, float, dict[str, Any]]] = [("float", base, 20.0, {"precision": "float32"}), ("int8-max", same, 8.0, {}), ("int8-search", same, 8.0, {})]
    assert _select(rows, prefer="int8-search").winner == "int8-search"
    assert _select(rows).winner == "int8-max"  # without a preference: the name decides


def test_when_nothing_is_within_the_criterion_the_most_accurate_is_recommended_with_a_warning() -> None:
    base = _correct(0, 0)
    sel = _select([("float", base, 20.0, {"precision": "float32"}), ("int8-a", _correct(0, 800), 5.0, {}), ("int8-b", _correct(0, 200, offset=900), 9.0, {})])
    assert sel.winner == "int8-b" and sel.acceptable == [] and sel.outcome == "none within the margin" and sel.warning
