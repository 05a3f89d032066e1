"""TensorRT engines. Without TensorRT (this machine, CI): the clear optional-dependency error, the
inspector summary, profile settings, plan-version refusal and build-error messages. With TensorRT and a
GPU (`-m "gpu and tensorrt"`): real INT8 / FP16 builds from the tiny run's ONNX, the runner against
ONNX Runtime, timing-cache reuse, the inspector report, a failing build and a foreign plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quant_workbench.config.recipe import DeploySpec, recipe_from_dict
from quant_workbench.core.errors import OptionalDependencyError, WorkbenchError
from quant_workbench.runtime import tensorrt as qtrt


def _has_tensorrt() -> bool:
    try:
        qtrt.require_tensorrt()
        return True
    except OptionalDependencyError:
        return False


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


HAS_TRT = _has_tensorrt()
skip_without_gpu_trt = pytest.mark.skipif(not (HAS_TRT and _has_cuda()), reason="needs TensorRT (pip install 'quant-workbench[tensorrt]') and an NVIDIA GPU")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OptionalDependencyError) as err:
        qtrt.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", qtrt.BuildSettings(qtrt.Shapes((1, 1), (1, 8), (2, 8)), precision="int8"))
    text = str(err.value)
    assert "pip install 'quant-workbench[tensorrt]'" in text and "pypi.nvidia.com" in text and "NGC" in text
    for call in (lambda: qtrt.TrtEngine(tmp_path / "m.plan"), lambda: qtrt.load_engine(tmp_path / "m.plan"), lambda: qtrt.engine_signature(tmp_path / "m.plan")):
        with pytest.raises(OptionalDependencyError):
            call()


def test_settings_from_the_recipe() -> None:
    base = {"name": "x", "model": {"source": "/nonexistent", "max_seq_length": 128}, "data": {"files": ["a.csv"]}}
    recipe = recipe_from_dict({**base, "deploy": {"max_batch_size": 16, "preferred_batch_sizes": [8], "tensorrt": {"opt_batch": 8, "opt_seq": 64, "workspace_mib": 512, "optimization_level": 5, "version_compatible": True}}})
    assert recipe.deploy is not None
    s = qtrt.settings_for_deploy(recipe, recipe.deploy, precision="int8")
    assert s.shapes == qtrt.Shapes((1, 1), (8, 64), (16, 128))
    assert s.workspace_bytes == 512 << 20 and s.optimization_level == 5 and s.version_compatible and s.precision == "int8" and s.fp16
    assert s.timing_cache == Path("reports/x/tensorrt.timing.cache")
    small = DeploySpec.model_validate({"max_batch_size": 16, "preferred_batch_sizes": [8], "tensorrt": {"max_batch": 8}})
    with pytest.raises(WorkbenchError, match="below deploy.max_batch_size"):
        qtrt.settings_for_deploy(recipe, small, precision="float32")
    bad = DeploySpec.model_validate({"tensorrt": {"opt_seq": 256}})
    with pytest.raises(WorkbenchError, match="sequence: min 1 <= opt 256 <= max 128"):
        qtrt.settings_for_deploy(recipe, bad, precision="float32")


def test_inspector_summary_tensorrt_10_and_11_formats() -> None:
    trt10 = {
        "Layers": [
            {"Name": "encoder.layer.0.attention.self.query/MatMul", "LayerType": "CaskGemm", "Inputs": [{"Name": "a", "Format/Datatype": "Row major linear INT8 format"}], "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
            {"Name": "LayerNorm", "Inputs": [{"Format/Datatype": "Row major linear FP16 format"}], "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
            {"Name": "softmax", "Inputs": [{"Format/Datatype": "Row major linear FP32"}], "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        ],
        "Bindings": ["input_ids", "embeddings"],
    }
    s = qtrt.summarize_layers(trt10)
    assert s["layers"] == 3 and s["by_precision"] == {"fp16": 1, "fp32": 1, "int8": 1}
    assert s["int8_layers"] == ["encoder.layer.0.attention.self.query/MatMul"]
    trt11 = {"Layers": [{"Name": "q", "Inputs": [{"Format": "Row major linear", "DataType": "Int8"}], "Outputs": [{"Format": "Row major linear", "DataType": "Half"}]}], "I/O Tensors": []}
    assert qtrt.summarize_layers(trt11)["by_precision"] == {"int8": 1}
    # LAYER_NAMES_ONLY verbosity: names only, nothing to classify
    assert qtrt.summarize_layers({"Layers": ["a", "b"]})["layers"] == 0


def test_plans_of_another_version_are_refused(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    qtrt.check_plan_version({"tensorrt_version": "10.13.0.35"}, "10.13.0.35", plan)
    qtrt.check_plan_version({}, "10.13.0.35", plan)  # no metadata: TensorRT itself decides
    with pytest.raises(qtrt.PlanVersionError, match="built by TensorRT 10.9.0.34; this is TensorRT 10.13.0.35") as err:
        qtrt.check_plan_version({"tensorrt_version": "10.9.0.34"}, "10.13.0.35", plan)
    assert "rebuild" in str(err.value)
    # version-compatible plans load in the same major version, same or newer
    qtrt.check_plan_version({"tensorrt_version": "10.9.0.34", "version_compatible": True}, "10.13.0.35", plan)
    with pytest.raises(qtrt.PlanVersionError):
        qtrt.check_plan_version({"tensorrt_version": "10.13.0.35", "version_compatible": True}, "11.0.0.1", plan)


def test_build_error_carries_tensorrt_log_lines() -> None:
    log = ["[I] parsing", "[W] something odd", "[E] 4: [network.cpp::validate] Error Code 4: Internal Error (out of memory)", "[I] done"]
    err = qtrt.EngineBuildError("TensorRT could not build an engine from m.onnx.", log)
    assert "out of memory" in str(err) and "parsing" not in str(err)
    assert err.log == log and err.exit_code == 2
    assert "something odd" in str(qtrt.EngineBuildError("x", ["[I] a", "[W] something odd"]))  # no error lines: the tail
    buf = qtrt.LogBuffer()
    for i in range(qtrt.LOG_LINES_KEPT + 10):
        buf.add("ERROR" if i % 2 else "INFO", f"m{i}")
    assert len(buf.lines) == qtrt.LOG_LINES_KEPT and buf.lines[-1].startswith("[E] ")
    assert all(x.startswith("[E]") for x in buf.errors())


def test_tensorrt_major() -> None:
    assert qtrt.tensorrt_major("10.13.0.35") == 10 and qtrt.tensorrt_major("11.4.0.106") == 11 and qtrt.tensorrt_major("") == 0


# ---------------------------------------------------------------------------------------------
# real builds (GPU + TensorRT)


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_gpu_trt
@pytest.mark.parametrize("variant", ["int8-max", "float"])
def test_build_and_run_against_onnxruntime(embedding_run: Path, tmp_path: Path, variant: str) -> None:
    from .conftest import TEXTS, reference_outputs

    onnx = embedding_run / "models" / ("float.onnx" if variant == "float" else f"{variant}.qdq.onnx")
    cache = tmp_path / "timing.cache"
    settings = qtrt.BuildSettings(qtrt.Shapes((1, 1), (4, 16), (8, 32)), precision="float32" if variant == "float" else "int8", timing_cache=cache, workspace_bytes=256 << 20)
    report = qtrt.build_engine(onnx, tmp_path / f"{variant}.plan", settings)
    assert cache.stat().st_size > 0 and not report.timing_cache_hit
    assert (tmp_path / f"{variant}.layers.json").is_file() and report.layers["layers"] > 0
    if variant != "float":
        assert report.layers["by_precision"].get("int8", 0) > 0, report.layers
    again = qtrt.build_engine(onnx, tmp_path / f"{variant}2.plan", settings)
    assert again.timing_cache_hit
    expected = reference_outputs(embedding_run, variant, TEXTS)
    with qtrt.TrtEngine(tmp_path / f"{variant}.plan") as eng:
        from transformers import AutoTokenizer

        from quant_workbench.config.recipe import load_recipe
        from quant_workbench.models.loading import tokenize

        recipe = load_recipe(embedding_run / "recipe.resolved.yaml")
        tok = AutoTokenizer.from_pretrained(recipe.model.location)
        got = np.concatenate([eng(tokenize(tok, [t], 32, eng.input_names)) for t in TEXTS])
        assert eng.describe()["backend"] == "tensorrt"
    cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() > 0.99, cos
    ins, outs = qtrt.engine_signature(tmp_path / f"{variant}.plan")
    from quant_workbench.deploy.triton import onnx_signature

    assert (ins, outs) == onnx_signature(onnx)  # engine, ONNX and config agree on names/types/dims


@pytest.mark.gpu
@pytest.mark.tensorrt
@skip_without_gpu_trt
def test_build_failure_and_foreign_plan(embedding_run: Path, tmp_path: Path) -> None:
    onnx = embedding_run / "models" / "float.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(qtrt.EngineBuildError, match="cannot parse"):
        qtrt.build_engine(broken, tmp_path / "b.plan", qtrt.BuildSettings(qtrt.Shapes((1, 1), (1, 8), (2, 8)), precision="float32"))
    plan = tmp_path / "f.plan"
    qtrt.build_engine(onnx, plan, qtrt.BuildSettings(qtrt.Shapes((1, 1), (1, 8), (2, 8)), precision="float32", timing_cache=None))
    meta = json.loads(qtrt.plan_meta_path(plan).read_text())
    meta["tensorrt_version"] = "9.0.0.1"
    qtrt.plan_meta_path(plan).write_text(json.dumps(meta))
    with pytest.raises(qtrt.PlanVersionError):
        qtrt.load_engine(plan)
    corrupt = tmp_path / "c.plan"
    shutil.copyfile(plan, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:64])
    with pytest.raises(WorkbenchError):
        qtrt.load_engine(corrupt)

