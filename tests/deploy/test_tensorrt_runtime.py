"""`engine.runtime: tensorrt`: every variant is scored and timed through an engine built from its own
ONNX file, with the variant's precision (FP16 baseline, INT8 or FP8 Q/DQ), the profile covering what
the run feeds it, plans cached by key, and the inspector's layer summary in the report.

TensorRT cannot run here, so the TensorRT library calls are replaced at the module boundary: the fake
build writes the ONNX bytes as the "plan" plus an inspector-style summary, and the fake runner executes
that ONNX with ONNX Runtime. Everything between the recipe and those two calls is the real code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tiny_fixtures import TINY_SEQ

from quant_workbench.config.recipe import EngineSpec, recipe_from_dict
from quant_workbench.core.errors import OptionalDependencyError, WorkbenchError
from quant_workbench.pipeline.run import execute
from quant_workbench.runtime import preflight_runtime
from quant_workbench.runtime import tensorrt as qtrt
from quant_workbench.runtime.onnxruntime import OrtEngine

REAL_TRT_ENGINE = qtrt.TrtEngine


class FakeTensorRT:
    """Stands in for the TensorRT library: records builds, runs 'plans' (ONNX copies) with ONNX Runtime."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] = (9, 0)) -> None:
        self.builds: list[tuple[str, qtrt.BuildSettings]] = []
        self.opened: list[str] = []
        monkeypatch.setattr(qtrt, "require_tensorrt", lambda feature="": None)
        monkeypatch.setattr(qtrt, "tensorrt_version", lambda: "10.13.0")
        monkeypatch.setattr(qtrt, "gpu_capability", lambda: capability)
        monkeypatch.setattr(qtrt, "_gpu_name", lambda: "Fake H100")
        monkeypatch.setattr(qtrt, "build_engine", self.build_engine)
        monkeypatch.setattr(qtrt, "TrtEngine", self.engine)

    def build_engine(self, onnx_path: Path, plan_path: Path, settings: qtrt.BuildSettings) -> qtrt.BuildReport:
        self.builds.append((plan_path.stem, settings))
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, plan_path)
        low = {"float32": "fp16", "int8": "int8", "fp8": "fp8"}[settings.precision]
        return qtrt.BuildReport(
            plan=str(plan_path), tensorrt_version="10.13.0", seconds=1.5, settings=settings.to_dict(), strongly_typed=False,
            layers={"layers": 10, "by_precision": {low: 6, "fp32": 4}, "int8_layers": [], "report": plan_path.stem + ".layers.json"},
        )

    def engine(self, plan: Path, name: str = "tensorrt") -> Any:
        self.opened.append(name)
        fake = self

        class Runner(OrtEngine):
            def __init__(self) -> None:
                super().__init__(Path(plan), EngineSpec(threads=1), name)
                self.plan, self.version = Path(plan), "10.13.0"
                assert fake is not None

            def describe(self) -> dict[str, Any]:
                return REAL_TRT_ENGINE.describe(self)  # type: ignore[arg-type]

        return Runner()


def _recipe(make_recipe: Any, **engine: Any) -> dict[str, Any]:
    data = make_recipe(methods=["max", "mse"])
    data["engine"] = {"runtime": "tensorrt", **engine}
    data["benchmark"].update({"batch_sizes": [1, 4], "iterations": 2})
    return data


def test_every_variant_runs_on_an_engine_built_with_its_precision(make_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTensorRT(monkeypatch)
    data = _recipe(make_recipe)
    data["quantization"]["compare"] = ["int8", "fp8"]
    data["quantization"]["calibration"]["methods"] = ["max"]
    data["export"]["opset"] = 19
    result = execute(recipe_from_dict(data), progress=False, say=lambda s: None, run_id="trt")
    assert all(v.status == "ok" for v in result.variants), [v.error for v in result.variants]
    built = {name: s for name, s in fake.builds}
    assert {n: s.precision for n, s in built.items()} == {"float": "float32", "int8-max": "int8", "fp8-max": "fp8"}
    # the float baseline is the float32 build with FP16 kernels allowed (engine.tensorrt.fp16): labelled fp16
    assert result.variant("float").precision == "fp16"  # type: ignore[union-attr]
    for s in built.values():
        # one profile covers evaluation batches (calibration.batch_size 16), benchmark batches and the model length
        assert s.shapes.max == (16, TINY_SEQ) and s.shapes.min == (1, 1)
    # evaluation and benchmark both ran on the engines, not on ONNX Runtime sessions of the ONNX files
    # evaluate opens each once; the benchmark once more, float twice (its A/A control reuses the same plan)
    assert fake.opened.count("float") == 3 and fake.opened.count("int8-max") == 2
    for v in result.variants:
        assert v.engine["backend"] == "tensorrt" and v.engine["tensorrt_layers"]["layers"] == 10
        assert v.latency and v.metrics["accuracy"] > 0
    run_dir = Path(data["output_dir"]) / "tiny" / "trt"
    assert (run_dir / "engines" / "int8-max.plan").is_file() and (run_dir / "engines" / "int8-max.build.json").is_file()
    md = (run_dir / "report.md").read_text()
    assert "## TensorRT engines" in md and "| int8-max | evaluate + benchmark | 10.13.0 | 10 | int8 6, fp32 4 | 1.5 |" in md

    # same recipe again: the plans' keys match, nothing is rebuilt
    fake.builds.clear()
    execute(recipe_from_dict(data), progress=False, say=lambda s: None, run_id="trt")
    assert fake.builds == []


def test_a_changed_onnx_or_setting_rebuilds_the_plan(make_recipe: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeTensorRT(monkeypatch)
    recipe = recipe_from_dict(_recipe(make_recipe))
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    onnx_file = models / "int8-max.qdq.onnx"
    onnx_file.write_bytes(b"not really onnx")
    plan = tmp_path / "run" / "engines" / "int8-max.plan"
    settings = qtrt.settings_for_runtime(recipe, "int8")
    qtrt.plan_from_onnx(onnx_file, plan, settings)
    assert qtrt.plan_from_onnx(onnx_file, plan, settings).cached
    onnx_file.write_bytes(b"other bytes")
    assert not qtrt.plan_from_onnx(onnx_file, plan, settings).cached
    other = qtrt.settings_for_runtime(recipe.model_copy(update={"engine": EngineSpec(runtime="tensorrt", tensorrt={"optimization_level": 5})}), "int8")
    assert not qtrt.plan_from_onnx(onnx_file, plan, other).cached
    assert len(fake.builds) == 3


def test_profile_too_small_for_the_run_is_a_recipe_error(make_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTensorRT(monkeypatch)
    recipe = recipe_from_dict(_recipe(make_recipe, tensorrt={"max_batch": 2}))
    with pytest.raises(WorkbenchError, match="engine.tensorrt max_batch=2") as err:
        preflight_runtime(recipe)
    assert "calibration.batch_size" in str(err.value)


def test_fp8_needs_fp8_tensor_cores(make_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeTensorRT(monkeypatch, capability=(8, 0))  # A100: INT8 yes, FP8 no
    data = _recipe(make_recipe)
    data["quantization"]["compare"] = ["int8", "fp8"]
    data["export"]["opset"] = 19
    with pytest.raises(WorkbenchError, match=r"compute capability 8\.9 or newer .*8\.0"):
        preflight_runtime(recipe_from_dict(data))
    data["quantization"]["compare"] = ["int8"]
    preflight_runtime(recipe_from_dict(data))


def test_no_gpu_is_a_clear_error(make_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTensorRT(monkeypatch)
    monkeypatch.setattr(qtrt, "gpu_capability", lambda: None)
    with pytest.raises(WorkbenchError, match="needs an NVIDIA GPU"):
        preflight_runtime(recipe_from_dict(_recipe(make_recipe)))
    assert fake.builds == []


@pytest.mark.skipif(qtrt.gpu_capability() is not None, reason="a GPU is present")
def test_without_tensorrt_the_cli_exits_2_naming_the_extra(make_recipe: Any, write_recipe: Any, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        qtrt.require_tensorrt()
        pytest.skip("TensorRT is installed here")
    except OptionalDependencyError:
        pass
    from quant_workbench.cli import main

    path = write_recipe(_recipe(make_recipe))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "quant-workbench[tensorrt]" in err and "engine.runtime: tensorrt" in err and "Traceback" not in err
    run_root = Path(_recipe(make_recipe)["output_dir"]) / "tiny"
    assert not list(run_root.glob("*/models/*.onnx")), "nothing should be exported before the runtime check"


def test_a_failed_engine_build_fails_that_variant_with_tensorrt_s_lines(make_recipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTensorRT(monkeypatch)
    real_build = fake.build_engine

    def build(onnx_path: Path, plan_path: Path, settings: qtrt.BuildSettings) -> qtrt.BuildReport:
        if plan_path.stem == "int8-mse":
            raise qtrt.EngineBuildError(
                "TensorRT could not build an engine from int8-mse.qdq.onnx.",
                ["[I] starting build", "[E] 4: [optimizer.cpp::computeCosts] no implementation for node_MatMul_53 under the workspace limit"],
            )
        return real_build(onnx_path, plan_path, settings)

    monkeypatch.setattr(qtrt, "build_engine", build)
    result = execute(recipe_from_dict(_recipe(make_recipe)), progress=False, say=lambda s: None, run_id="broken")
    status = {v.name: v.status for v in result.variants}
    assert status == {"float": "ok", "int8-max": "ok", "int8-mse": "failed"}
    failed = next(v for v in result.variants if v.name == "int8-mse")
    assert failed.error is not None and "no implementation for node_MatMul_53" in failed.error and "[I] starting build" not in failed.error
    assert result.best_variant == "int8-max"
    assert next(v for v in result.variants if v.name == "int8-max").latency


def test_fp8_engine_build_is_refused_on_a_gpu_without_fp8_tensor_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploy builds (build_for_deploy -> build_engine) check the GPU before TensorRT is touched."""
    monkeypatch.setattr(qtrt, "require_tensorrt", lambda feature="": None)
    monkeypatch.setattr(qtrt, "gpu_capability", lambda: (8, 6))  # A10 / RTX 30xx: INT8 tensor cores, no FP8
    monkeypatch.setattr(qtrt, "_gpu_name", lambda: "NVIDIA A10")
    settings = qtrt.BuildSettings(qtrt.Shapes((1, 1), (8, 64), (8, 64)), precision="fp8")
    with pytest.raises(WorkbenchError, match=r"NVIDIA A10.*8\.6") as err:
        qtrt.build_engine(tmp_path / "fp8-max.qdq.onnx", tmp_path / "fp8-max.plan", settings)
    assert "drop fp8" in (err.value.hint or "")
    assert qtrt.engine_precision("fp8") == "fp8" and qtrt.engine_precision("float32") == "float32" and qtrt.engine_precision(None) == "float32"
