"""Recipe sections compose (issue 11): search + QAT + compare + references + deploy in one run, the
combinations that cannot work rejected at load, and the search criterion deciding among every variant."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_workbench.errors import RecipeError
from quant_workbench.recipe import recipe_from_dict
from quant_workbench.results import LatencyStats, VariantResult
from quant_workbench.selection import select_meeting_criterion

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
    from quant_workbench.run import execute, run_dir_for

    data = _everything(make_recipe(model_dir=tiny_classifier_dir, task="sequence-classification", name="everything"), tmp_path)
    recipe = recipe_from_dict(data)
    result = execute(recipe, progress=False, say=lambda _: None)
    run_dir = run_dir_for(recipe)

    names = [v.name for v in result.variants]
    # PTQ families (compare x methods), the search's baseline and choice, QAT, then the standard tools' rows
    assert names[:4] == ["float", "int8-max", "int8-mse", "int8-dynamic"]
    assert names[4] == "int8-search" and names[5] == "int8-qat"
    assert names[6:] == ["ref:ort-float", "ref:ort-dynamic", "ref:ort-static"]
    assert names.count("int8-max") == 1  # the search's all-INT8 max baseline is the PTQ family's int8-max
    failed = {v.name: v.error for v in result.variants if v.status != "ok"}
    assert not failed, failed
    assert all(v.metrics.get("accuracy") is not None for v in result.variants)
    assert all(v.latency for v in result.variants)

    # the search's results live in RunResult: report.json and report.md carry them with everything else
    assert result.search is not None and result.search["selected_variant"] == "int8-search"
    assert "selected_meets_at_lower_bound" in result.search
    stored = json.loads((run_dir / "report.json").read_text())
    assert stored["search"]["selected_variant"] == "int8-search" and stored["schema_version"] == 3
    assert json.loads((run_dir / "search.json").read_text())["final_threshold"] == result.selection["threshold"]
    md = (run_dir / "report.md").read_text()
    for section in ("## Search", "## Training: qat", "## Against the standard tools", "int8-dynamic", "int8-qat", "## Triton model repository"):
        assert section in md, section
    # the search criterion decided, among every candidate (not only the search's own choice)
    assert result.selection["criterion"] == recipe.search.criterion.describe()  # type: ignore[union-attr]
    assert set(result.selection["meeting"]) <= {"int8-max", "int8-mse", "int8-dynamic", "int8-search", "int8-qat"}
    assert result.best_variant in result.selection["meeting"]
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


def _v(name: str, accuracy: float, ms: float, *, seed: int = 0, agreement: float = 0.9, precision: str = "int8", reference: bool = False) -> VariantResult:
    return VariantResult(
        name=name, precision=precision,  # type: ignore[arg-type]
        metrics={"accuracy": accuracy, "agreement": agreement}, latency=[_lat(ms, seed=seed)], reference=reference,
    )


def test_the_fastest_variant_meeting_the_criterion_wins_not_the_most_accurate() -> None:
    variants = [
        _v("float", 0.80, 20.0, precision="float32"),
        _v("int8-qat", 0.80, 12.0, seed=1),  # most accurate, slower
        _v("int8-search", 0.795, 8.0, seed=2),  # meets, fastest that meets
        _v("int8-max", 0.70, 6.0, seed=3),  # fastest, misses the criterion
        _v("ref:ort-dynamic", 0.80, 5.0, seed=4, reference=True),  # never a candidate
    ]
    sel = select_meeting_criterion(variants, {}, threshold=0.79, criterion="drop <= 0.01", prefer="int8-search")
    assert sel.meeting == ["int8-qat", "int8-search"]
    assert sel.winner == "int8-search" and sel.fastest == "int8-search"
    assert sel.criterion == "drop <= 0.01" and sel.threshold == 0.79
    assert "search criterion drop <= 0.01" in sel.rule


def test_speed_ties_among_those_meeting_go_to_the_more_accurate_then_the_search_choice() -> None:
    tied = [_v("float", 0.80, 20.0, precision="float32"), _v("int8-a", 0.795, 8.0, seed=1), _v("int8-b", 0.799, 8.0, seed=2)]
    assert select_meeting_criterion(tied, {}, 0.79, "c").winner == "int8-b"
    same = [_v("float", 0.80, 20.0, precision="float32"), _v("int8-max", 0.795, 8.0, seed=1), _v("int8-search", 0.795, 8.0, seed=1)]
    assert select_meeting_criterion(same, {}, 0.79, "c", prefer="int8-search").winner == "int8-search"
    assert select_meeting_criterion(same, {}, 0.79, "c").winner == "int8-max"  # without a preference: the name decides


def test_when_nothing_meets_the_criterion_the_noise_aware_rule_picks_the_most_accurate() -> None:
    variants = [_v("float", 0.80, 20.0, precision="float32"), _v("int8-a", 0.60, 5.0, seed=1), _v("int8-b", 0.75, 9.0, seed=2)]
    sel = select_meeting_criterion(variants, {}, 0.79, "c")
    assert sel.winner == "int8-b" and sel.meeting == []
    assert sel.reason.startswith("no candidate meets c")
