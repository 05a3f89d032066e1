"""End-to-end `execute()`: (a) the tiny random BERT on the tiny CSV (fast): artifacts, report contents,
calibration cache, resumable re-runs, the classification task; (b) the default recipe on the bundled real
model and corpus with small subsets (marked `integration`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_fixtures import recipe_dict

from quant_workbench.config.recipe import load_recipe, recipe_from_dict
from quant_workbench.core.results import RunResult
from quant_workbench.pipeline.run import execute, run_dir_for
from quant_workbench.quantize.observers import load_stats

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1, 16), (2, 16)]
QUIET: dict[str, Any] = {"progress": False, "say": lambda s: None}


def _execute(data: dict[str, Any], overrides: list[str] | None = None) -> tuple[RunResult, Path]:
    recipe = recipe_from_dict(data, overrides)
    result = execute(recipe, **QUIET)
    return result, run_dir_for(recipe)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def first_run(out_root: Path, tiny_bert_dir: Path, tiny_csv: Path) -> tuple[RunResult, Path, dict[str, Any]]:
    data = recipe_dict(out_root, tiny_bert_dir, tiny_csv, methods=["max", "entropy"])
    result, run_dir = _execute(data)
    return result, run_dir, data


def _report(run_dir: Path) -> RunResult:
    return RunResult.from_dict(json.loads((run_dir / "report.json").read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------
# (a) tiny model


def test_run_folder_holds_every_artifact(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    _, run_dir, data = first_run
    assert run_dir.parent == Path(data["output_dir"]) / "tiny"
    models = run_dir / "models"
    expected = [
        models / "float.onnx",
        models / "int8-max.qdq.onnx",
        models / "int8-entropy.qdq.onnx",
        models / "int8-max.scales.json",
        run_dir / "calibration_stats.npz",
        run_dir / "recipe.resolved.yaml",
        run_dir / "report.json",
        run_dir / "report.md",
        run_dir / "plots" / "delta_vs_speedup.png",
    ]
    for path in expected:
        assert path.is_file() and path.stat().st_size > 0, path
    assert (run_dir / "plots" / "delta_vs_speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for onnx_file in ("float.onnx", "int8-max.qdq.onnx", "int8-entropy.qdq.onnx"):
        assert (models / f"{onnx_file}.key").is_file()
    # no temp files left behind by the atomic writes
    assert not list(run_dir.rglob("*.tmp"))
    # the resolved recipe re-validates to the recipe that ran
    assert load_recipe(run_dir / "recipe.resolved.yaml") == recipe_from_dict(data)
    calibrators, meta = load_stats(run_dir / "calibration_stats.npz")
    assert calibrators and all(c.num_collected > 0 for c in calibrators.values())


def test_report_json_has_every_variant_with_metrics_latency_and_fidelity(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    result, run_dir, _ = first_run
    report = _report(run_dir)
    assert report.to_dict() == json.loads(json.dumps(result.to_dict()))
    refs = ["ref:ort-float", "ref:ort-dynamic", "ref:ort-static"]
    assert [v.name for v in report.variants] == ["float", "int8-max", "int8-entropy", *refs]
    assert [v.name for v in report.variants if v.reference] == refs
    assert report.task == "embedding" and report.primary_metric == "accuracy"
    assert report.data["sizes"] == {"calibration": 32, "probe": 120, "evaluation": 60}
    assert report.data["label_names"] == ["negative", "neutral", "positive"]
    for v in report.variants:
        assert v.status == "ok", (v.name, v.error)
        assert 0.0 <= v.metrics["accuracy"] <= 1.0
        assert "macro_f1" in v.metrics and "agreement" in v.metrics
        assert v.metrics["cosine_to_float"] > 0.99
        for b, s in SHAPES:
            lat = v.latency_at(b, s)
            assert lat is not None and lat.iterations == 3 and lat.p50_ms > 0
        assert v.size_bytes and v.size_bytes > 0
    float_v = report.variant("float")
    assert float_v is not None and float_v.metrics["cosine_to_float"] == pytest.approx(1.0)
    assert float_v.fidelity["passed"] and float_v.fidelity["onnx_vs_pytorch_max_abs_diff"] <= 1e-4
    # the synthetic labels are word-driven: the probe on random-BERT embeddings beats chance (1/3)
    assert float_v.metrics["accuracy"] > 0.4
    # the float baseline runs as ONNX Runtime's fused graph (the fastest float it offers on CPU)
    assert float_v.artifacts["engine_onnx"] == "models/float.fused.onnx"
    assert float_v.fidelity["engine_graph"]["passed"]
    assert float_v.fidelity["engine_graph"]["fused_ops"] == {"EmbedLayerNormalization": 1, "Attention": 2, "LayerNormalization": 4, "BiasGelu": 2}
    for v in report.variants[1:3]:
        assert v.precision == "int8"
        assert set(v.speedup_vs_float) == {f"b{b}xs{s}" for b, s in SHAPES}
        assert all(x > 0 for x in v.speedup_vs_float.values())
        assert v.fidelity["per_layer"]["passed"] and v.fidelity["per_layer"]["layers"] == 12
        assert v.fidelity["end_to_end"]["passed"]
        # all 12 Linears as integer kernels: 2 QAttention (Q, K, V each) + 6 MatMulIntegerToFloat
        graph = v.fidelity["engine_graph"]
        assert graph["graph"] == "fused-int8" and graph["passed"], graph
        assert graph["lowering"]["quantized_attention"] == 2 and graph["lowering"]["quantized_matmuls"] == 6
        assert v.engine["integer_ops"] == {"MatMulIntegerToFloat": 6, "QAttention": 2} and v.engine["float_matmuls"] == 0
        assert graph["fusions_lost_vs_float"] == {}
        assert v.artifacts["onnx"] == f"models/{v.name}.qdq.onnx"
    for v in report.variants[3:]:
        assert v.status == "ok" and v.metrics and v.latency and v.artifacts["reference_onnx"].startswith("models/ref-")
    assert report.variant("ref:ort-dynamic").engine["integer_matmuls"] == 8  # type: ignore[union-attr]
    assert report.best_variant in {"int8-max", "int8-entropy"}
    # issue 10: intervals for every variant, paired Δ for the quantized ones, and the selection's reasoning
    assert report.schema_version == 4 and report.search is None  # no search section: nothing to carry
    for v in report.variants:
        lo, hi = v.intervals["accuracy"]
        assert lo <= v.metrics["accuracy"] <= hi and v.intervals["n"] == report.evaluation["variants"][v.name]["n"]
        for st in v.latency:
            assert len(st.samples_ms) == 3 and st.p50_low_ms is not None and st.p50_high_ms is not None
            assert st.p50_low_ms <= st.p50_ms <= st.p50_high_ms
    for v in report.variants[1:]:
        cmp = v.intervals["vs_float"]
        assert cmp["delta_low"] <= cmp["delta"] <= cmp["delta_high"]
        assert cmp["delta"] == pytest.approx(v.metrics["accuracy"] - report.variants[0].metrics["accuracy"])
        assert cmp["disagreements"] == round((1 - v.metrics["agreement"]) * 60)
        assert set(v.speedup_interval_vs_float) == set(v.speedup_vs_float)
    assert report.selection["winner"] == report.best_variant
    # issue 16: the margin rule's record, the evaluation's blocks, the benchmark's design and A/A control
    assert report.selection["outcome"] in ("decided", "undetermined", "none within the margin", "no speed-up")
    assert [c["name"] for c in report.selection["comparisons"]["accuracy"]] == ["int8-max", "int8-entropy"]
    assert "Holm" in report.selection_rule and report.selection["accuracy_margin"] == 0.005
    assert report.evaluation["looks"] == 5 and report.evaluation["variants"]["float"]["n"] == 60
    assert report.evaluation["decisions"][0]["split"] == "evaluation"
    assert set(report.benchmark["aa"]) == {f"b{b}xs{s}" for b, s in SHAPES}
    assert next(iter(report.benchmark["shapes"])) == "b2xs16"  # the selection shape first
    assert report.benchmark["sessions"]["session_config"]["session.intra_op.allow_spinning"] == "0"
    # int8-dynamic-style gates: every candidate passed its engine-graph check to be one
    assert all(v.fidelity["engine_graph"]["passed"] for v in report.variants[1:3])
    assert report.calibration["cache_hit"] is False
    assert set(report.calibration["methods"]) == {"max", "entropy"}
    assert report.timings_s["total"] > 0


def test_report_markdown_contents(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    result, run_dir, _ = first_run
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Quantization report: tiny")
    for name in ("float", "int8-max", "int8-entropy"):
        assert f"| {name}" in md
    assert "## Against the standard tools" in md and "## Engine graphs" in md
    assert f"{result.best_variant} beats ref:ort-static" in md or "ref:ort-static" in md
    assert "plots/delta_vs_speedup.png" in md
    assert "Batch 1 × sequence length 16" in md and "Batch 2 × sequence length 16" in md
    assert f"**{result.best_variant}**" in md


def test_report_markdown_does_not_call_a_larger_model_smaller(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    result, run_dir, _ = first_run
    best = result.variant(result.best_variant or "")
    ref = result.variant("float")
    assert best is not None and ref is not None and best.size_bytes and ref.size_bytes
    assert best.size_bytes > ref.size_bytes  # Q/DQ ONNX stores float weights + scales
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    claim = re.search(r"([0-9.]+)× smaller than float", md)
    assert claim is None or float(claim.group(1)) > 1.0, claim.group(0) if claim else ""


def test_second_method_run_hits_the_calibration_cache(first_run: tuple[RunResult, Path, dict[str, Any]], out_root: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    first, first_dir, _ = first_run
    data = recipe_dict(out_root, tiny_bert_dir, tiny_csv, methods=["percentile"])
    result, run_dir = _execute(data)
    assert run_dir != first_dir  # a different recipe is a different run folder
    assert result.calibration["cache_hit"] is True
    assert result.calibration["cache_file"] == first.calibration["cache_file"]
    assert json.loads((run_dir / "report.json").read_text())["calibration"]["cache_hit"] is True
    assert [v.name for v in result.variants if not v.reference] == ["float", "int8-percentile"]
    assert all(v.status == "ok" for v in result.variants)
    # the copied statistics are the cached ones, byte for byte
    assert (run_dir / "calibration_stats.npz").read_bytes() == (first_dir / "calibration_stats.npz").read_bytes()
    # the same float baseline: identical evaluation
    assert result.variants[0].metrics == first.variants[0].metrics


def test_rerun_into_the_same_folder_reuses_artifacts(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    first, run_dir, data = first_run
    models = run_dir / "models"
    onnx_files = sorted(models.glob("*.onnx"))
    assert {"float.onnx", "float.fused.onnx", "int8-max.qdq.onnx", "int8-max.fused.onnx", "ref-ort-static.onnx"} <= {p.name for p in onnx_files}
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in onnx_files}
    result, again_dir = _execute(data)
    assert again_dir == run_dir
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(models.glob("*.onnx"))}
    assert after == before  # not re-exported: the .key sidecars matched
    assert result.calibration["cache_hit"] is True
    assert [v.status for v in result.variants] == ["ok"] * 6
    assert [v.metrics for v in result.variants] == [v.metrics for v in first.variants]
    assert _report(run_dir).run_id == run_dir.name


def test_stale_key_sidecar_forces_a_new_export(first_run: tuple[RunResult, Path, dict[str, Any]]) -> None:
    _, run_dir, data = first_run
    path = run_dir / "models" / "int8-max.qdq.onnx"
    sidecar = path.with_name(path.name + ".key")
    good_key = sidecar.read_text()
    sidecar.write_text("stale\n")
    before = path.stat().st_mtime_ns
    result, _ = _execute(data)
    assert path.stat().st_mtime_ns != before
    assert sidecar.read_text() == good_key
    assert all(v.status == "ok" for v in result.variants)


def test_sequence_classification_task(tmp_path: Path, tiny_classifier_dir: Path, tiny_csv: Path) -> None:
    data = recipe_dict(tmp_path, tiny_classifier_dir, tiny_csv, task="sequence-classification", methods=["max"], name="tiny_cls")
    data["benchmark"]["enabled"] = False
    result, run_dir = _execute(data)
    assert result.task == "sequence-classification"
    assert [v.name for v in result.variants if not v.reference] == ["float", "int8-max"]
    for v in result.variants:
        assert v.status == "ok", v.error
        assert {"accuracy", "macro_f1", "agreement", "cosine_to_float"} <= set(v.metrics)
        assert 0.0 <= v.metrics["accuracy"] <= 1.0
    int8 = result.variants[1]
    assert int8.metrics["agreement"] > 0.8
    # 12 encoder Linears as 2 QAttention + 6 MatMulIntegerToFloat; the pooler and classifier stay float
    assert int8.engine["integer_ops"] == {"MatMulIntegerToFloat": 6, "QAttention": 2}
    assert int8.latency == []  # benchmark disabled
    import onnx

    outputs = [o.name for o in onnx.load(str(run_dir / "models" / "float.onnx")).graph.output]
    assert outputs == ["logits"]
    assert (run_dir / "report.md").is_file()


# ---------------------------------------------------------------------------------------------
# (b) the default recipe on the bundled real model and corpus


@pytest.mark.integration
def test_default_recipe_on_the_bundled_model(tmp_path: Path) -> None:
    overrides = [
        "data.calibration_samples=64",
        "data.probe_samples=300",
        "data.eval_samples=200",
        "benchmark.iterations=3",
        "benchmark.warmup=1",
        "benchmark.batch_sizes=[1,4]",
        "benchmark.max_seconds=6",  # the adaptive length runs, capped
        "quantization.calibration.methods=[max]",  # the default recipe's (each further method costs three rows; they run on tiny models)
        # the SmoothQuant scheme is the tiny-model run's business (tests/test_openvino.py); here the plain rows
        "quantization.compare=[int8,int8-dynamic]",
        "quantization.smoothquant=null",
        "export.fidelity_samples=16",
        f"output_dir={tmp_path / 'reports'}",
        f"quantization.calibration.cache_dir={tmp_path / 'calibration'}",
    ]
    recipe = load_recipe(ROOT / "recipes" / "bert_int8.yaml", overrides)
    result = execute(recipe, **QUIET)
    run_dir = run_dir_for(recipe)
    assert (run_dir / "report.json").is_file() and (run_dir / "report.md").is_file()
    refs = ["ref:ort-float", "ref:ort-dynamic", "ref:ort-static", "ref:openvino-float", "ref:openvino-nncf"]
    # the default recipe compares ONNX Runtime and OpenVINO (issue 17): f32 rows, and bf16 where this CPU has it
    from quant_workbench.core.machine import openvino_supports

    bf16 = ["-bf16"] if openvino_supports("bf16") else []
    # float in f32 and bf16; each INT8 variant one row, its float leftovers in bf16 where this CPU has it
    ov_rows = [f"float{p}@openvino" for p in ["", *bf16]] + [f"int8-max{bf16[0] if bf16 else ''}@openvino"]
    assert [v.name for v in result.variants] == ["float", "int8-max", "int8-dynamic", *ov_rows, *refs]
    for name in ov_rows:
        v = next(x for x in result.variants if x.name == name)
        assert v.status == "ok" and v.runtime == "openvino" and v.speedup_interval_vs_float, (name, v.error)
        if name.startswith("int8"):
            assert v.fidelity["engine_graph"]["graph"] == "qdq-qk" and v.fidelity["engine_graph"]["passed"]
            # every Linear an INT8 FullyConnected, QK^T-softmax-PV one INT8 block per layer (QK^T in INT8)
            assert v.engine["int8_matmuls"] == 36 and v.engine["attention_blocks"] == {"i8": 6} and v.engine["float_matmuls"] == {}
    result.variants = [v for v in result.variants if v.runtime != "openvino"]  # the ONNX Runtime rows, checked as before
    refs = refs[:3]
    float_v = result.variants[0]
    assert float_v.status == "ok"
    assert float_v.metrics["accuracy"] > 0.45  # 3 classes: chance is ~0.33
    assert float_v.fidelity["engine_graph"]["fused_ops"] == {"EmbedLayerNormalization": 1, "Attention": 6, "LayerNormalization": 12, "BiasGelu": 6}
    for v in result.variants[1:]:
        assert v.status == "ok", v.error
        assert abs(v.metrics["accuracy"] - float_v.metrics["accuracy"]) < 0.08
        assert v.metrics["cosine_to_float"] > (0.9 if v.name == "ref:ort-static" else 0.95)
        assert {x.key for x in v.latency} == {"b1xs128", "b4xs128"}
    for v in result.variants[1:2]:
        assert v.fidelity["per_layer"]["passed"] and v.fidelity["per_layer"]["layers"] == 36
        assert v.fidelity["end_to_end"]["passed"]
        # all 36 Linears (6 layers x 6) on integer kernels: Q/K/V as QAttention, the rest MatMulIntegerToFloat
        assert v.fidelity["engine_graph"]["graph"] == "fused-int8" and v.fidelity["engine_graph"]["passed"]
        assert v.engine["integer_ops"] == {"MatMulIntegerToFloat": 18, "QAttention": 6} and v.engine["float_matmuls"] == 0
    assert result.variants[2].engine["integer_ops"] == {"DynamicQuantizeMatMul": 18, "QAttention": 6}
    assert result.best_variant in {"int8-max", "int8-dynamic", *[n for n in ov_rows if n.startswith("int8")]}
    assert all(x.stop in {"resolved", "tolerance", "time cap", "iteration cap"} for v in result.variants for x in v.latency)
    assert all(v.speedup_interval_vs_float for v in result.variants[1:])
    md = (run_dir / "report.md").read_text()
    section = md.split("## Against the standard tools", 1)[1].split("\n## ", 1)[0]
    assert all(f"| {name} |" in section for name in refs)
    assert section.count("- **") == len(refs) + 2  # one verdict line per reference row (its wording depends on timing)
    assert result.data["sizes"] == {"calibration": 64, "probe": 300, "evaluation": 200}
    assert sorted(result.data["label_names"]) == ["negative", "neutral", "positive"]
    amax = json.loads((run_dir / "models" / "int8-max.scales.json").read_text())["amax"]
    assert len(amax) == 36 and all(np.isfinite(a) and a > 0 for a in amax.values())
