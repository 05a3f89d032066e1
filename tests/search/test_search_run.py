"""End-to-end search on the tiny random BERT: a deliberately broken group is found and falls back first,
calibration statistics are reused (no trial re-calibrates), a failing trial is recorded and the study
goes on, a SIGKILLed search resumes without losing a finished trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from tiny_fixtures import recipe_dict

import quant_workbench.pipeline.calibration as calibration_mod
import quant_workbench.search.sensitivity as sens_mod
from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.pipeline.run import execute, run_dir_for

QUIET: dict[str, Any] = {"progress": False, "say": lambda s: None}
FAST_LATENCY = {"batch_size": 1, "seq_length": 16, "warmup": 1, "iterations": 2}
BROKEN = "encoder.layer.1.output.dense"


def _search_recipe(out: Path, model_dir: Path, csv: Path, **search: Any) -> dict[str, Any]:
    data = recipe_dict(out, model_dir, csv)
    data["benchmark"] = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iterations": 2, "threads": 1}
    data["search"] = {"methods": ["max"], "latency": FAST_LATENCY, **search}
    return data


def test_broken_group_is_most_sensitive_and_falls_back_first(
    tmp_path: Path, broken_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"calibrate": 0}
    real = calibration_mod.calibrate

    def counting(*a: Any, **kw: Any) -> Any:
        calls["calibrate"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(calibration_mod, "calibrate", counting)
    data = _search_recipe(tmp_path, broken_bert_dir, tiny_csv, groups=["kind"], criterion={"absolute": 0.02}, max_trials=2)
    data["data"]["selection_samples"] = 50  # a held-out split of its own size: trials must be scored on it
    data["references"] = []  # the standard tools' rows beside a search: tests/test_composition.py
    recipe = recipe_from_dict(data)
    result = execute(recipe, **QUIET)
    run_dir = run_dir_for(recipe)
    s = json.loads((run_dir / "search.json").read_text())

    assert calls["calibrate"] == 1  # one pass for the whole search: every configuration reused it
    assert s["calibration_passes"] == 1
    ranking = [r["name"] for r in s["sensitivity"]]
    assert ranking[0] == "ffn-out" and BROKEN in s["sensitivity"][0]["modules"]
    assert s["sensitivity"][0]["score"] > 10 * max(r["score"] for r in s["sensitivity"][1:])
    steps = s["fallback"]["steps"]
    assert steps[0]["config"]["float_groups"] == [] and steps[0]["meets"] is False
    assert steps[1]["config"]["float_groups"] == ["ffn-out"]  # the broken group falls back first
    assert s["fallback"]["float_groups"] == ["ffn-out"] and s["fallback"]["meets"]
    # every evaluated configuration is recorded with its plan, scales and model
    assert len(s["records"]) >= 1 + 2 * len(ranking) + len(steps) - 1
    for r in s["records"]:
        assert (run_dir / r["artifacts"]["plan"]).exists() and (run_dir / r["artifacts"]["onnx"]).exists()
    plan_rows = json.loads((run_dir / s["fallback"]["final"]["artifacts"]["plan"]).read_text())
    assert {r["module"]: r["reason"] for r in plan_rows}[BROKEN] == "fallback: ffn-out"
    # selection, best/ and the report
    assert s["selected_meets"] and s["selected"]["p50_ms"] is not None
    assert (run_dir / "best" / "model.qdq.onnx").exists() and (run_dir / "best" / "config.json").exists()
    assert result.best_variant == "int8-search"
    names = [v.name for v in result.variants]
    assert names == ["float", "int8-max", "int8-search"]
    # trials are timed as fused INT8 engine graphs against the fused float baseline
    assert result.variant("float").artifacts["engine_onnx"] == "models/float.fused.onnx"  # type: ignore[union-attr]
    assert all(r["artifacts"].get("engine_onnx", "").endswith((".fused.onnx", ".u8.onnx")) for r in s["records"] if r["status"] == "ok")
    md = (run_dir / "report.md").read_text()
    for needle in ("## Search", "Sensitivity (most sensitive first)", "Automatic fallback", "Pareto front", BROKEN, "Optuna study"):
        assert needle in md
    assert (run_dir / "plots" / "sensitivity.png").stat().st_size > 1000
    assert (run_dir / "plots" / "pareto.png").stat().st_size > 1000
    assert s["study"]["complete"] == 2  # enqueued: all-INT8 and the fallback result
    # issue 10: the criterion also checked at the paired interval's lower bound; trials carry intervals
    assert isinstance(s["selected_meets_at_lower_bound"], bool)
    assert s["selected_delta_low"] <= result.variants[2].intervals["vs_float"]["delta"]
    assert "At the lower bound of the paired 95 % interval" in md
    fresh = [r for r in s["records"] if r["status"] == "ok" and not r["reused"]]
    assert fresh and all(r["metrics"]["delta_low"] <= r["metrics"]["delta_vs_float"] <= r["metrics"]["delta_high"] for r in fresh)
    assert {v.name: v.error for v in result.variants if v.status != "ok"} == {}
    assert all(v.intervals["accuracy"] for v in result.variants)
    # issue 16: the search chose on its held-out selection split; the evaluation split reports (and re-checks) it
    assert s["split"] == "selection" and s["split_size"] == 50 and all(r["split"] == "selection" for r in s["records"])
    assert all(r["metrics"]["examples"] == 50 for r in fresh)  # scored on the 50 held-out examples ...
    assert all(v.intervals["n"] == 60 for v in result.variants if v.name in ("float", "int8-search"))  # ... reported on the 60 others
    assert [d["split"] for d in result.evaluation["decisions"]] == ["selection", "evaluation"]
    assert "**selection** split (50 examples): search trials scored" in md
    # the search's variants passed the full Q/DQ gate before they joined the run
    assert all(result.variant(n).fidelity["per_layer"]["passed"] for n in ("int8-max", "int8-search"))  # type: ignore[union-attr]
    assert result.selection["accuracy_margin"] == 0.02 and "search criterion" in result.selection["margin_source"]

    # the same command again: statistics from the cache, every configuration reused, nothing re-exported
    again = execute(recipe, **QUIET)
    s2 = json.loads((run_dir / "search.json").read_text())
    assert calls["calibrate"] == 1 and again.calibration["cache_hit"] and s2["calibration_passes"] == 0
    assert s2["exports"] == 0 and all(r["reused"] for r in s2["records"])


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sens_mod.export_onnx
    calls = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first export inside the study (the baseline was export 1)
            raise RuntimeError("boom: simulated exporter crash")
        return real(*a, **kw)

    monkeypatch.setattr(sens_mod, "export_onnx", flaky)
    data = _search_recipe(
        tmp_path, tiny_bert_dir, tiny_csv, groups=["layer"], methods=["max", "percentile"], percentiles=[99.0, 99.9],
        sensitivity=False, fallback=False, max_trials=4, sampler="random",
    )
    recipe = recipe_from_dict(data)
    execute(recipe, **QUIET)
    s = json.loads((run_dir_for(recipe) / "search.json").read_text())
    st = s["study"]
    assert calls["n"] >= 3  # the study went on after the failure
    assert st["failed"] == 1 and st["complete"] + st["failed"] == 4
    failed = [t for t in st["trials"] if t["state"] == "FAIL"]
    assert "boom: simulated exporter crash" in failed[0]["error"]
    assert "boom" in (run_dir_for(recipe) / "report.md").read_text()
    run_dir = run_dir_for(recipe)
    study = optuna.load_study(study_name=st["study_name"], storage=f"sqlite:///{(run_dir / 'study.db').resolve()}")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rec = t.user_attrs["record"]
        assert (run_dir / rec["artifacts"]["onnx"]).exists() and rec["p50_ms"] > 0 and t.values[0] == rec["accuracy"]
        resolved = recipe_from_dict(t.user_attrs["resolved_recipe"])  # a plain recipe reproducing the trial
        assert resolved.search is None and resolved.quantization.calibration.methods == [rec["config"]["method"]]
        assert sorted(resolved.quantization.ignore) == sorted(rec["float_modules"])


def _load_trials(storage: str, name: str) -> list[Any]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_killed_search_resumes_without_losing_trials(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    data = _search_recipe(
        tmp_path, tiny_bert_dir, tiny_csv, groups=["layer"], methods=["max", "percentile"], percentiles=[99.0, 99.9, 99.99],
        sensitivity=False, fallback=False, max_trials=5, sampler="random", study_name="resume",
    )
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    run_dir = run_dir_for(recipe_from_dict(data))
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    cmd = [sys.executable, "-m", "quant_workbench.cli", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before: dict[int, Any] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (run_dir / "study.db").exists():
            try:
                done = [t for t in _load_trials(storage, "resume") if t.state.name == "COMPLETE"]
            except Exception:
                continue
            if len(done) >= 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                before = {t.number: t.values for t in _load_trials(storage, "resume") if t.state.name == "COMPLETE"}
                break
    assert before, f"worker ended before it could be killed: {proc.stderr.read().decode() if proc.stderr else ''}"
    assert proc.returncode == -signal.SIGKILL
    assert len(before) < 5
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trials = _load_trials(storage, "resume")
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    after = {t.number: t.values for t in trials if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in before.items())  # no finished trial lost or re-run
    counted = [t for t in trials if t.state.name == "COMPLETE" or (t.state.name == "FAIL" and "error" in t.user_attrs)]
    assert len(counted) == 5
    interrupted = [t for t in trials if "interrupted" in t.user_attrs]
    assert len(interrupted) <= 1 and all(t.state.name == "FAIL" for t in interrupted)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert os.path.exists(run_dir / "best" / "model.qdq.onnx")


def test_criterion_at_the_interval_lower_bound() -> None:
    from quant_workbench.core.results import VariantResult
    from quant_workbench.search.study import criterion_at_lower_bound

    v = VariantResult(name="int8-search", precision="int8")
    assert criterion_at_lower_bound(v, 0.73, 0.7227) == {"selected_meets_at_lower_bound": None}
    v.intervals = {"vs_float": {"delta": -0.003, "delta_low": -0.012, "delta_high": 0.005, "level": 0.05}}
    # the point estimate (72.70 %) meets a 72.27 % threshold, the lower bound (71.80 %) does not
    out = criterion_at_lower_bound(v, 0.73, 0.7227)
    assert out["selected_meets_at_lower_bound"] is False and out["interval_confidence"] == pytest.approx(95.0)
    assert criterion_at_lower_bound(v, 0.73, 0.715)["selected_meets_at_lower_bound"] is True
