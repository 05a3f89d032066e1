"""OpenVINO as an engine (issue 17) on the tiny random BERT: the engine itself, bf16 detection, the runtime-
graph summary, the OpenVINO layout (Q/DQ on the attention matmuls) with its fake-quant check and fallback,
a compile crash found in the child process, the recipe keys, and one run over ONNX Runtime + OpenVINO
with the standard OpenVINO path's reference rows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows, recipe_dict

pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")

import quant_workbench.core.machine as machine  # noqa: E402
import quant_workbench.export.openvino as openvino_graphs  # noqa: E402
import quant_workbench.runtime.openvino as ov_engine  # noqa: E402
from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec, Recipe, recipe_from_dict  # noqa: E402
from quant_workbench.core.comparator import cosine_rows  # noqa: E402
from quant_workbench.core.errors import ExportError, RecipeError, WorkbenchError  # noqa: E402
from quant_workbench.core.results import RunResult, VariantResult  # noqa: E402
from quant_workbench.export.openvino import ScaleSource, openvino_graph  # noqa: E402
from quant_workbench.export.qdq import export_onnx
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize  # noqa: E402
from quant_workbench.pipeline.engine_rows import EngineRows, other_rows  # noqa: E402
from quant_workbench.quantize.apply import calibrate, prepare, set_scales  # noqa: E402
from quant_workbench.quantize.observers import HistogramCalibrator  # noqa: E402
from quant_workbench.quantize.plan import QuantPlan, build_plan  # noqa: E402
from quant_workbench.quantize.smoothquant import float_mode  # noqa: E402
from quant_workbench.runtime import EngineFromOnnx, preflight_runtime, row_name, row_precisions  # noqa: E402
from quant_workbench.runtime.onnxruntime import OrtEngine  # noqa: E402
from quant_workbench.runtime.openvino import EngineCompileError, OvEngine, compile_check, properties  # noqa: E402

TEXTS = [t for t, _ in make_rows()]
REAL_CHILD = ov_engine.CHILD
SPEC = EngineSpec(provider="cpu", threads=1)


def _feed(loaded: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return to_torch(tokenize(loaded.tokenizer, texts, TINY_SEQ, loaded.input_names))


def _np(feed: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in feed.items()}


class Prepared:
    """The tiny BERT with every Linear quantized (max), its statistics, and its float / Q/DQ exports."""

    def __init__(self, model_dir: Path, out: Path) -> None:
        self.loaded = load_model(ModelSpec(source=str(model_dir), max_seq_length=TINY_SEQ))
        self.plan: QuantPlan = build_plan(self.loaded.model.hf, QuantSpec())
        full = build_plan(self.loaded.model.hf, QuantSpec(quantize_attention_matmuls=True))
        prepare(self.loaded.model.hf, full, per_channel_weights=True)  # attention quantizers exist, the plan switches them
        from quant_workbench.quantize.apply import apply_flags

        def loop(model: torch.nn.Module) -> None:
            for i in range(0, 32, 16):
                model(**_feed(self.loaded, TEXTS[i : i + 16]))

        self.calibrators: dict[str, HistogramCalibrator] = calibrate(self.loaded.model, loop, num_bins=2048)
        apply_flags(self.loaded.model.hf, self.plan)
        set_scales(self.loaded.model, self.calibrators, "max")
        # variable lengths: padded rows are where a lost attention mask would show
        self.example = _feed(self.loaded, [TEXTS[i] * (1 + i % 3) for i in range(40, 52)])
        self.float_path = out / "float.onnx"
        with float_mode(self.loaded.model):
            export_onnx(self.loaded.model, self.float_path, self.example, self.loaded.input_names, self.loaded.output_name, 18)
        self.qdq = out / "int8-max.qdq.onnx"
        export_onnx(self.loaded.model, self.qdq, self.example, self.loaded.input_names, self.loaded.output_name, 18)
        self.out = out


@pytest.fixture(scope="module")
def prepared(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return Prepared(tiny_bert_dir, tmp_path_factory.mktemp("ov"))


def _recipe(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, **engine: Any) -> Recipe:
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["engine"].update(engine)
    return recipe_from_dict(data)


# ---------------------------------------------------------------------------------------------
# the engine


def test_openvino_f32_matches_onnxruntime_at_any_shape_with_explicit_properties(prepared: Prepared) -> None:
    shapes = [_np(prepared.example), _np(_feed(prepared.loaded, TEXTS[:3]))]
    with OvEngine(prepared.float_path, SPEC, "float", inference_precision="f32") as ov, OrtEngine(prepared.float_path, SPEC, "float") as ort:
        for feed in shapes:  # one compiled model, two batch x sequence shapes (dynamic axes kept)
            np.testing.assert_allclose(ov(feed), ort(feed), atol=1e-4)
        assert ov.describe() == {
            "backend": "openvino", "version": ov.describe()["version"], "device": ov.describe()["device"],
            "inference_precision": "f32", "threads": 1, "streams": 1, "hint": "latency", "pinning": False,
        }
        assert ov.input_names == ort.input_names and ov.output_names == ort.output_names
        # the output buffer is reused by the next inference: a result must be a copy
        first = ov(shapes[0])
        ov(shapes[1])
        np.testing.assert_allclose(first, ort(shapes[0]), atol=1e-4)


def test_onnx_runtime_sessions_do_not_spin_into_the_next_engine() -> None:
    """Rows of two engines share one timing loop: idle ONNX Runtime threads must not spin on the cores the
    next call (often OpenVINO's) needs."""
    from quant_workbench.runtime.onnxruntime import session_options

    assert session_options(SPEC).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_properties_are_explicit_and_follow_the_recipe() -> None:
    spec = EngineSpec(threads=3, openvino={"streams": 2, "hint": "throughput", "pinning": True, "precisions": ["f32"]})
    assert properties(spec) == {"INFERENCE_NUM_THREADS": 3, "NUM_STREAMS": 2, "PERFORMANCE_HINT": "THROUGHPUT", "ENABLE_CPU_PINNING": True, "INFERENCE_PRECISION_HINT": "f32"}
    assert properties(spec, threads=1, inference_precision="bf16")["INFERENCE_NUM_THREADS"] == 1
    assert "INFERENCE_PRECISION_HINT" not in properties(spec, inference_precision="default")  # the standard path's rows
    assert properties(EngineSpec())["INFERENCE_NUM_THREADS"] == len(os.sched_getaffinity(0))  # never left to OpenVINO


@pytest.mark.skipif(not machine.openvino_supports("bf16"), reason="this CPU / OpenVINO has no bf16")
def test_bf16_rows_compute_in_bf16(prepared: Prepared) -> None:
    feed = _np(prepared.example)
    with OvEngine(prepared.float_path, SPEC, "f", inference_precision="f32") as f32, OvEngine(prepared.float_path, SPEC, "b", inference_precision="bf16") as bf16:
        a, b = f32(feed), bf16(feed)
        assert bf16.describe()["inference_precision"] == "bf16"
        assert bf16.summary()["float_matmuls"] == {"bf16": 12}
    assert float(cosine_rows(a, b).mean()) > 0.999 and not np.allclose(a, b, atol=1e-6)


def test_bf16_is_detected_from_the_cpu_and_openvino(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    facts = machine.precision_facts()
    flags = machine.cpu_flags() or frozenset()
    assert facts["bf16_dot_product"] == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert facts["openvino"]["bf16"] == ("BF16" in facts["openvino"]["capabilities"] and facts["bf16_dot_product"])
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"])
    assert row_precisions(recipe, "openvino") == (["f32", "bf16"] if facts["openvino"]["bf16"] else ["f32"])
    assert row_precisions(recipe, "onnxruntime") == [None]
    # a quantized variant gets one row, its float leftovers in the fastest precision this machine has
    assert row_precisions(recipe, "openvino", quantized=True) == (["bf16"] if facts["openvino"]["bf16"] else ["f32"])
    assert other_rows(recipe, quantized=True) == [("openvino", "bf16" if facts["openvino"]["bf16"] else "f32")]
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert not machine.openvino_supports("bf16")
    assert row_precisions(recipe, "openvino") == ["f32"] and row_precisions(recipe, "openvino", quantized=True) == ["f32"]
    explicit = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"], openvino={"precisions": ["f32", "bf16"]})
    with pytest.raises(WorkbenchError, match="cannot compute on this machine"):
        preflight_runtime(explicit)


def test_runtime_summary_says_what_runs_in_int8(prepared: Prepared) -> None:
    with OvEngine(prepared.qdq, SPEC, "q", inference_precision="f32") as eng:
        linears = eng.summary()
    with OvEngine(prepared.float_path, SPEC, "f", inference_precision="f32") as eng:
        floats = eng.summary()
    assert linears["int8_matmuls"] == 12 and linears["float_matmuls"] == {}
    assert linears["attention_blocks"] == {"f32": 2}  # fused, but in float: the matmuls carry no Q/DQ
    assert linears["activations_fused_into_matmuls"] == {"gelu": 2}
    assert floats["int8_matmuls"] == 0 and floats["float_matmuls"] == {"f32": 12} and floats["int8_layers"] == 0
    assert "MVN" in floats["float_work"]["f32"]


# ---------------------------------------------------------------------------------------------
# the OpenVINO layout and its check


def _variant() -> VariantResult:
    return VariantResult(name="int8-max", precision="int8", calibration_method="max")


def test_openvino_layout_adds_attention_qdq_and_runs_int8_attention(prepared: Prepared, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"])
    scales = ScaleSource(prepared.calibrators, "max", 99.99)
    path, check = openvino_graph(recipe, prepared.out, prepared.loaded, "int8-max", prepared.qdq, prepared.example, precision="int8", plan=prepared.plan, scales=scales)
    assert path.name == "int8-max.qk.qdq.onnx" and check["graph"] == "qdq-qk" and check["passed"]
    assert "2 attention score matmuls" in check["notes"][0]
    with OvEngine(path, SPEC, "q", inference_precision="f32") as eng:
        summary = eng.summary()
    assert summary["attention_blocks"] == {"i8": 2} and summary["int8_matmuls"] == 12
    # the variant's own quantizers are as they were: the attention quantizers went off again
    from quant_workbench.quantize.apply import quantizers

    assert not any(q.enabled for n, q in quantizers(prepared.loaded.model.hf).items() if "_matmul." in n)
    layout_qdq = recipe_from_dict({**recipe.model_dump(mode="json"), "engine": {**recipe.engine.model_dump(mode="json"), "openvino": {"int8_graph": "qdq"}}})
    path, check = openvino_graph(layout_qdq, prepared.out, prepared.loaded, "int8-max", prepared.qdq, prepared.example, precision="int8", plan=prepared.plan, scales=scales)
    assert path == prepared.qdq and check["graph"] == "qdq"
    both = recipe_from_dict({**recipe.model_dump(mode="json"), "engine": {**recipe.engine.model_dump(mode="json"), "openvino": {"int8_graph": "qdq-attention"}}})
    path, check = openvino_graph(both, prepared.out, prepared.loaded, "int8-max", prepared.qdq, prepared.example, precision="int8", plan=prepared.plan, scales=scales)
    assert path.name == "int8-max.attention.qdq.onnx" and check["passed"] and "4 attention matmuls (QK^T, PV)" in check["notes"][0]


def test_an_openvino_graph_that_disagrees_falls_back_then_fails(prepared: Prepared, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"])
    scales = ScaleSource(prepared.calibrators, "max", 99.99)
    real = openvino_graphs.run_openvino

    def wrong_attention(path: Path, recipe: Recipe, example: dict[str, torch.Tensor], inference_precision: str | None = "f32") -> np.ndarray:
        out = real(path, recipe, example, inference_precision)
        return -out if ".qk." in path.name else out

    monkeypatch.setattr(openvino_graphs, "run_openvino", wrong_attention)
    path, check = openvino_graph(recipe, prepared.out, prepared.loaded, "int8-max", prepared.qdq, prepared.example, precision="int8", plan=prepared.plan, scales=scales)
    assert path == prepared.qdq and check["graph"] == "qdq"
    assert any("qdq-qk graph not used on OpenVINO: mean cosine" in n for n in check["notes"])
    monkeypatch.setattr(openvino_graphs, "run_openvino", lambda path, recipe, example, inference_precision="f32": -real(path, recipe, example, inference_precision))
    with pytest.raises(ExportError, match="no OpenVINO graph of int8-max passed"):
        openvino_graph(recipe, prepared.out, prepared.loaded, "int8-max", prepared.qdq, prepared.example, precision="int8", plan=prepared.plan, scales=scales)


def test_openvino_gets_the_whole_quantization_noise_as_allowance() -> None:
    """OpenVINO's kernels round differently from QuantizeLinear (measured: docs/openvino.md): its graph may be as
    far from the fake-quant model as that model is from float, where ONNX Runtime's may be half as far."""
    from quant_workbench.export.qdq import end_to_end_allowance

    assert openvino_graphs.openvino_allowance(0.0224, 0.99) == pytest.approx(0.0224)
    assert end_to_end_allowance(0.0224, 0.99) == pytest.approx(0.0112)
    assert openvino_graphs.openvino_allowance(0.004, 0.99) == pytest.approx(0.01)  # the floor: 1 - export.min_cosine


# ---------------------------------------------------------------------------------------------
# a compile crash is that row's failure, never the run's


def _crashing_child(tmp_path: Path, crash_if: str) -> Path:
    script = tmp_path / "crashing_child.py"
    script.write_text(
        "import os, runpy, signal, sys\n"
        f"if {crash_if!r} in sys.argv[1]:\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
        f"sys.argv[0] = {str(REAL_CHILD)!r}\n"
        f"runpy.run_path({str(REAL_CHILD)!r}, run_name='__main__')\n"
    )
    return script


def test_a_segfault_while_compiling_is_an_engine_error_and_is_cached(prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "crash.onnx"
    model.write_bytes(prepared.float_path.read_bytes())
    monkeypatch.setattr(ov_engine, "CHILD", _crashing_child(tmp_path, "crash"))
    props = properties(SPEC, inference_precision="f32")
    with pytest.raises(EngineCompileError, match=r"crashed with SIGSEGV in a child process"):
        compile_check(model, props)
    stored = [json.loads(p.read_text()) for p in (tmp_path / ".openvino").glob("*.json")]
    assert len(stored) == 1 and stored[0]["ok"] is False
    monkeypatch.setattr(ov_engine, "CHILD", tmp_path / "missing.py")  # the cache answers; no child runs
    with pytest.raises(EngineCompileError, match="SIGSEGV"):
        OvEngine(model, SPEC, "crash", inference_precision="f32")
    monkeypatch.setattr(ov_engine, "CHILD", _crashing_child(tmp_path, "never"))
    assert compile_check(model, properties(SPEC, inference_precision="bf16"))["ok"]  # other settings: checked again
    model.write_bytes(prepared.qdq.read_bytes())  # other content: checked again (the key is the file's hash)
    assert compile_check(model, props)["summary"]["int8_matmuls"] == 12


def test_rows_whose_graph_crashes_openvino_fail_and_the_others_are_built(prepared: Prepared, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"], openvino={"precisions": ["f32"]})
    models = tmp_path / "models"  # its own compile-check cache
    models.mkdir()
    qdq = models / "int8-max.qdq.onnx"
    qdq.write_bytes(prepared.qdq.read_bytes())
    monkeypatch.setattr(ov_engine, "CHILD", _crashing_child(tmp_path, ".qk."))
    rows = EngineRows(recipe, models, say=lambda s: None)
    built = rows.variant_rows(_variant(), prepared.loaded, qdq, prepared.example, plan=prepared.plan, scales=ScaleSource(prepared.calibrators, "max", 99.99))
    ((row, path),) = built
    # the layout graph crashed OpenVINO's compiler (in the child): the row falls back to the Q/DQ export
    assert row.status == "ok" and path == qdq and row.name == "int8-max@openvino"
    assert any("SIGSEGV" in n for n in row.fidelity["engine_graph"]["notes"])
    monkeypatch.setattr(ov_engine, "CHILD", _crashing_child(tmp_path, ".onnx"))
    other = tmp_path / "other"
    other.mkdir()
    qdq = other / "int8-max.qdq.onnx"
    qdq.write_bytes(prepared.qdq.read_bytes())
    ((row, path),) = EngineRows(recipe, other, say=lambda s: None).variant_rows(_variant(), prepared.loaded, qdq, prepared.example, plan=prepared.plan, scales=None)
    assert row.status == "failed" and path is None and "SIGSEGV" in (row.error or "")


# ---------------------------------------------------------------------------------------------
# recipe keys and row names


def test_runtimes_name_the_reference_engine_first(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"])
    assert recipe.engine.runtime == "onnxruntime" and recipe.engine.all_runtimes == ["onnxruntime", "openvino"]
    assert recipe.reference_kinds == ["ort-float", "ort-dynamic", "ort-static", "openvino-float", "openvino-nncf"]
    assert recipe_from_dict(recipe.model_dump(mode="json")) == recipe  # the resolved recipe loads back
    only_ov = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtime="openvino")
    assert only_ov.reference_kinds == ["openvino-float", "openvino-nncf"] and only_ov.engine.all_runtimes == ["openvino"]
    with pytest.raises(RecipeError, match="differs from the first of engine.runtimes"):
        _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtime="tensorrt", runtimes=["onnxruntime", "openvino"])
    with pytest.raises(RecipeError, match="list each engine once"):
        _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["openvino", "openvino"])
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["references"] = ["openvino-nncf"]
    with pytest.raises(RecipeError, match="add openvino to engine.runtimes"):
        recipe_from_dict(data)
    # keys at their defaults stay out of the dump: recipes written before keep their run ids
    assert "runtimes" not in _recipe(tmp_path, tiny_bert_dir, tiny_csv).model_dump()["engine"]
    assert "openvino" not in _recipe(tmp_path, tiny_bert_dir, tiny_csv).model_dump()["engine"]


def test_row_names(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    both = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"], openvino={"precisions": ["f32", "bf16"]})
    assert row_name("int8-max", both, "onnxruntime") == "int8-max"
    assert row_name("int8-max", both, "openvino", "f32") == "int8-max@openvino"
    assert row_name("float", both, "openvino", "bf16") == "float-bf16@openvino"
    assert other_rows(both) == [("openvino", "f32"), ("openvino", "bf16")]
    assert other_rows(both, quantized=True) == [("openvino", "f32"), ("openvino", "bf16")]  # an explicit list: every row
    assert row_name("int8-max", both, "openvino", "bf16", quantized=True) == "int8-max-bf16@openvino"
    ov_first = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["openvino", "onnxruntime"], openvino={"precisions": ["bf16", "f32"]})
    assert row_name("float", ov_first, "openvino", "bf16") == "float"  # the reference engine's first precision keeps the name
    assert row_name("float", ov_first, "openvino", "f32") == "float"
    assert row_name("int8-max", ov_first, "onnxruntime") == "int8-max@onnxruntime"
    assert other_rows(ov_first) == [("openvino", "f32"), ("onnxruntime", None)]


# ---------------------------------------------------------------------------------------------
# one run over ONNX Runtime and OpenVINO


@pytest.fixture(scope="module")
def ov_run(tiny_bert_dir: Path, tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    from quant_workbench.pipeline.run import execute, run_dir_for

    out = tmp_path_factory.mktemp("ov_run")
    data = recipe_dict(out, tiny_bert_dir, tiny_csv, name="tiny_ov")
    data["engine"]["runtimes"] = ["onnxruntime", "openvino"]
    data["engine"]["openvino"] = {"precisions": ["f32", "bf16"] if machine.openvino_supports("bf16") else ["f32"]}
    data["references"] = ["ort-dynamic", "openvino-float", "openvino-nncf"]
    # the default recipe's SmoothQuant scheme (alpha 0.95, FFN-out too) gets its OpenVINO rows from its own statistics
    data["quantization"].update(compare=["int8", "int8-smoothquant"], smoothquant={"alpha": 0.95, "ffn_out": True})
    data["benchmark"].update(batch_sizes=[2], iterations=2, warmup=1)
    recipe = recipe_from_dict(data)
    return execute(recipe, progress=False, say=lambda s: None), run_dir_for(recipe)


def test_every_variant_is_scored_and_timed_on_each_engine(ov_run: tuple[RunResult, Path]) -> None:
    result, run_dir = ov_run
    bf16 = machine.openvino_supports("bf16")
    b = ["-bf16"] if bf16 else []
    expected = ["float", "int8-max", "int8-sq0.95-max", *[f"{v}{p}@openvino" for v in ("float", "int8-max", "int8-sq0.95-max") for p in ["", *b]],
                "ref:ort-dynamic", "ref:openvino-float", "ref:openvino-nncf"]
    assert [v.name for v in result.variants] == expected
    by = {v.name: v for v in result.variants}
    assert all(v.status == "ok" for v in result.variants), [(v.name, v.error) for v in result.variants if v.status != "ok"]
    assert by["float"].runtime == "onnxruntime" and by["int8-max@openvino"].runtime == "openvino"
    assert by["int8-max@openvino"].inference_precision == "f32" and by["ref:openvino-nncf"].inference_precision == "default"
    # one interleaved loop: every row timed in the same rounds at every shape
    assert {len(v.latency[0].samples_ms) for v in result.variants} == {2} and all(v.speedup_vs_float for v in result.variants if v.name != "float")
    # every row scored against the same float predictions (paired)
    assert all(v.intervals["vs_float"]["n"] == by["float"].intervals["n"] for v in result.variants if v.name != "float")
    layout = by["int8-max@openvino"].fidelity["engine_graph"]
    assert layout["graph"] == "qdq-qk" and layout["passed"] and by["int8-max@openvino"].engine["attention_blocks"] == {"i8": 2}
    assert by["int8-max@openvino"].artifacts["engine_onnx"] == "models/int8-max.qk.qdq.onnx"
    assert by["float@openvino"].fidelity["engine_graph"]["passed"]
    sq = by["int8-sq0.95-max@openvino"]
    assert sq.fidelity["engine_graph"]["graph"] == "qdq-qk" and sq.fidelity["engine_graph"]["passed"]
    assert sq.fidelity["smoothquant"]["explicit_input_scales"] == 6  # q/k/v, ffn-in, ffn-out of both layers
    assert sq.engine["int8_matmuls"] == 12 and sq.engine["float_matmuls"] == {}  # the explicit scales cost no INT8 kernel
    assert by["ref:openvino-nncf"].reference and by["ref:openvino-nncf"].engine["int8_matmuls"] == 12
    assert (run_dir / "models" / "ref-openvino-nncf.xml").is_file() and (run_dir / "models" / "ref-openvino-nncf.bin").is_file()
    assert result.best_variant is not None and not result.best_variant.startswith("ref:")
    assert result.hardware["openvino"]["capabilities"] and "openvino" in result.versions and "nncf" in result.versions


def test_the_report_has_each_engines_graph_and_the_engines_table(ov_run: tuple[RunResult, Path]) -> None:
    _, run_dir = ov_run
    md = (run_dir / "report.md").read_text()
    for heading in ("## Engines and precisions", "### ONNX Runtime", "### OpenVINO", "`ref:openvino-nncf`: `nncf.quantize`"):
        assert heading in md
    row = next(line for line in md.splitlines() if line.startswith("| int8-max@openvino | qdq-qk"))
    assert "12 (6 write INT8)" in row and "2 i8" in row and "FakeQuantize" in row  # Q, K and FFN-in write INT8
    assert "| float@openvino | openvino f32 | float32 |" in md
    from quant_workbench.report.schema import load_report

    assert load_report(run_dir).variant("int8-max@openvino") is not None  # report.json passes the schema check


def test_rerun_reuses_every_openvino_artifact(ov_run: tuple[RunResult, Path], tiny_bert_dir: Path, tiny_csv: Path) -> None:
    result, run_dir = ov_run
    models = run_dir / "models"
    ours = ("int8-max.qk.qdq.onnx", "int8-max.qk.qdq.onnx.key", "ref-openvino-nncf.xml", "ref-openvino-nncf.bin", "ref-openvino-nncf.xml.key")
    stamps = {p.name: p.stat().st_mtime_ns for p in models.iterdir() if p.name in ours}
    assert len(stamps) == len(ours)
    checks = sorted(p.name for p in (models / ".openvino").iterdir())
    from quant_workbench.config.recipe import load_recipe
    from quant_workbench.pipeline.run import execute

    again = execute(load_recipe(run_dir / "recipe.resolved.yaml"), progress=False, say=lambda s: None)
    assert [v.name for v in again.variants] == [v.name for v in result.variants]
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir() if p.name in ours} == stamps  # OpenVINO's graphs and the NNCF model reused
    assert sorted(p.name for p in (models / ".openvino").iterdir()) == checks


def test_engine_from_onnx_opens_the_rows_runtime(ov_run: tuple[RunResult, Path]) -> None:
    result, run_dir = ov_run
    from quant_workbench.config.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    v = result.variant("int8-max@openvino")
    assert v is not None
    with EngineFromOnnx(run_dir / v.artifacts["engine_onnx"], recipe, v.name, v.precision, runtime=v.runtime, inference_precision=v.inference_precision) as eng:
        assert eng.describe()["backend"] == "openvino"


def test_a_missing_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    recipe = _recipe(tmp_path, tiny_bert_dir, tiny_csv, runtimes=["onnxruntime", "openvino"])
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(WorkbenchError, match=r"pip install 'quant-workbench\[openvino\]'"):
        preflight_runtime(recipe)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(WorkbenchError, match=r"quant-workbench\[openvino\]"):
        openvino_graphs.require_nncf()
