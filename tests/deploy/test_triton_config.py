"""Triton model repository generation without a server: golden configs, Triton-schema parsing,
cross-checks against the ONNX graph, the repository writer, the CLI and the recipe section."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient) is not installed")

from tritonclient.grpc import model_config_pb2  # noqa: E402

from quant_workbench.cli import main  # noqa: E402
from quant_workbench.config.recipe import DeploySpec, EngineSpec, load_recipe, recipe_from_dict  # noqa: E402
from quant_workbench.core.errors import OptionalDependencyError, RecipeError  # noqa: E402
from quant_workbench.deploy import deploy_run, preflight  # noqa: E402
from quant_workbench.deploy.triton import (  # noqa: E402
    MANIFEST,
    DeployError,
    Repository,
    TensorSig,
    check_ensemble,
    check_model_config,
    ensemble_config,
    onnx_signature,
    onnxruntime_config,
    parse_config,
    python_onnxruntime_config,
    resolve_variants,
    tensorrt_config,
    tokenizer_config,
    validate_repository,
)
from quant_workbench.runtime.onnxruntime import CPU_DISABLED_OPTIMIZERS

GOLDEN = Path(__file__).with_name("golden")
INPUTS = [TensorSig(n, "TYPE_INT64", (-1,)) for n in ("input_ids", "attention_mask", "token_type_ids")]
OUTPUTS = [TensorSig("embeddings", "TYPE_FP32", (384,))]


def _spec(**kw: object) -> DeploySpec:
    return DeploySpec.model_validate({"max_batch_size": 32, "preferred_batch_sizes": [8, 16, 32], "max_queue_delay_microseconds": 500, **kw})


def _golden_configs() -> dict[str, str]:
    spec = _spec()
    return {
        "python_onnxruntime.pbtxt": python_onnxruntime_config("int8-mse-cpu", INPUTS, OUTPUTS, spec, EngineSpec()),
        "onnxruntime_trt_int8.pbtxt": onnxruntime_config("int8-mse-ort", INPUTS, OUTPUTS, spec, "int8"),
        "onnxruntime_cpu.pbtxt": onnxruntime_config("float-ort", INPUTS, OUTPUTS, _spec(instance_kind="cpu", instance_count=2), "float32"),
        "tensorrt_plan.pbtxt": tensorrt_config("int8-mse-trt", INPUTS, OUTPUTS, spec),
        "tokenizer.pbtxt": tokenizer_config(INPUTS, spec, 128, pair=False),
        "ensemble.pbtxt": ensemble_config("int8-mse-cpu-text", "int8-mse-cpu", INPUTS, OUTPUTS, spec, pair=False),
    }


@pytest.mark.parametrize("name", sorted(_golden_configs()))
def test_golden_configs(name: str) -> None:
    text = _golden_configs()[name]
    if os.environ.get("QWB_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text(), f"{name} changed; review and re-run with QWB_UPDATE_GOLDEN=1"
    cfg = parse_config(text, name)  # Triton's own schema
    assert cfg.max_batch_size == 32


def test_configs_carry_the_recipe_settings() -> None:
    configs = {k: parse_config(v) for k, v in _golden_configs().items()}
    py = configs["python_onnxruntime.pbtxt"]
    assert py.backend == "python" and not py.platform
    assert list(py.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert py.dynamic_batching.max_queue_delay_microseconds == 500
    assert py.instance_group[0].kind == py.instance_group[0].KIND_CPU
    assert all(i.allow_ragged_batch for i in py.input)
    # the served model disables exactly what the workbench's own engine disables
    assert py.parameters["disabled_optimizers"].string_value.split(",") == list(CPU_DISABLED_OPTIMIZERS)
    check_model_config(py, INPUTS, OUTPUTS, "python")

    ort = configs["onnxruntime_trt_int8.pbtxt"]
    assert ort.platform == "onnxruntime_onnx"
    assert ort.instance_group[0].kind == ort.instance_group[0].KIND_GPU
    (acc,) = ort.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "INT8"
    cpu = configs["onnxruntime_cpu.pbtxt"]
    assert cpu.instance_group[0].count == 2 and cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator

    trt = configs["tensorrt_plan.pbtxt"]
    assert trt.platform == "tensorrt_plan" and trt.instance_group[0].kind == trt.instance_group[0].KIND_GPU
    check_model_config(trt, INPUTS, OUTPUTS, "trt")

    tok = configs["tokenizer.pbtxt"]
    assert [(i.name, i.data_type) for i in tok.input] == [("text", model_config_pb2.TYPE_STRING)]
    assert [o.name for o in tok.output] == [s.name for s in INPUTS]
    assert tok.parameters["max_length"].string_value == "128"

    ens = configs["ensemble.pbtxt"]
    check_ensemble(ens, {"tokenizer": tok, "int8-mse-cpu": py, "int8-mse-cpu-text": ens}, "ensemble")


def test_parse_rejects_what_triton_rejects() -> None:
    with pytest.raises(DeployError, match="ModelConfig"):
        parse_config('name: "x"\nmax_batch_size: 4\nbogus_field: 1\n')
    with pytest.raises(DeployError, match="ModelConfig"):
        parse_config('name: "x"\ninput [ { name: "a" data_type: TYPE_NOT_A_TYPE dims: [1] } ]\n')


def test_cross_check_catches_mismatches() -> None:
    spec = _spec()
    cfg = parse_config(tensorrt_config("m", INPUTS, OUTPUTS, spec))
    with pytest.raises(DeployError, match="'embeddings' is TYPE_FP32 \\[384\\] but the model has TYPE_FP16"):
        check_model_config(cfg, INPUTS, [TensorSig("embeddings", "TYPE_FP16", (384,))], "m")
    with pytest.raises(DeployError, match="input names"):
        check_model_config(cfg, INPUTS[:2], OUTPUTS, "m")
    with pytest.raises(DeployError, match="dims|\\[-1\\]"):
        check_model_config(cfg, [TensorSig("input_ids", "TYPE_INT64", (128,)), *INPUTS[1:]], OUTPUTS, "m")
    # an ensemble whose model step reads a tensor nothing produced
    tok = parse_config(tokenizer_config(INPUTS[:2], spec, 16, pair=False))
    model = parse_config(python_onnxruntime_config("m", INPUTS, OUTPUTS, spec, EngineSpec()))
    ens = parse_config(ensemble_config("e", "m", INPUTS, OUTPUTS, spec, pair=False))
    with pytest.raises(DeployError, match="token_type_ids"):
        check_ensemble(ens, {"tokenizer": tok, "m": model}, "e")
    full_tok = parse_config(tokenizer_config(INPUTS, spec, 16, pair=False))
    with pytest.raises(DeployError, match="not in the repository"):
        check_ensemble(ens, {"tokenizer": full_tok}, "e")
    check_ensemble(ens, {"tokenizer": full_tok, "m": model}, "e")


def test_onnx_signature(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def model(batch: str | int) -> Path:
        x = helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, "seq"])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, "seq"])
        graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)], "g", [x], [y])
        path = tmp_path / f"m{batch}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    ins, outs = onnx_signature(model("batch"))
    assert ins == [TensorSig("ids", "TYPE_INT64", (-1,))] and outs == [TensorSig("out", "TYPE_FP32", (-1,))]
    with pytest.raises(DeployError, match="dynamic batch axis"):
        onnx_signature(model(4))


def test_deploy_spec_validation() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        DeploySpec.model_validate({"max_batch_size": 8, "preferred_batch_sizes": [16]})
    with pytest.raises(ValueError, match="repeat"):
        DeploySpec.model_validate({"targets": ["onnxruntime", "onnxruntime"]})
    base = {"name": "x", "model": {"source": "/nonexistent"}, "data": {"files": ["a.csv"]}}
    with pytest.raises(RecipeError, match="deploy.max_batchsize.*did you mean 'max_batch_size'"):
        recipe_from_dict({**base, "deploy": {"max_batchsize": 8}})
    assert recipe_from_dict(base).deploy is None
    assert recipe_from_dict({**base, "deploy": {}}).deploy == DeploySpec()


def test_deploy_section_does_not_change_the_run_id() -> None:
    from quant_workbench.pipeline.run import recipe_hash

    base = {"name": "x", "model": {"source": "/nonexistent"}, "data": {"files": ["a.csv"]}}
    assert recipe_hash(recipe_from_dict(base)) == recipe_hash(recipe_from_dict({**base, "deploy": {"max_batch_size": 4, "preferred_batch_sizes": [4]}}))


def test_resolve_variants() -> None:
    have = {"float": 1, "int8-max": 1}
    assert resolve_variants(["best", "float"], "int8-max", have) == ["int8-max", "float"]
    assert resolve_variants(["best", "int8-max"], "int8-max", have) == ["int8-max"]
    with pytest.raises(DeployError, match="no best variant"):
        resolve_variants(["best"], None, have)
    with pytest.raises(DeployError, match="int8-mse"):
        resolve_variants(["int8-mse"], "int8-max", have)


# ---------------------------------------------------------------------------------------------
# the repository written by a real (tiny) run


def test_run_writes_a_valid_repository(embedding_run: Path) -> None:
    repo_dir = embedding_run / "triton"
    repo = Repository.load(repo_dir)
    assert repo.best_variant == "int8-max" and repo.task == "embedding" and repo.max_seq_length == 32
    names = {m.name for m in repo.models}
    assert names == {"int8-max-cpu", "int8-max-ort", "float-cpu", "float-ort"}
    assert repo.cpu_models() == ["tokenizer", "int8-max-cpu", "int8-max-cpu-text", "float-cpu", "float-cpu-text"]
    platforms = validate_repository(repo_dir)
    assert platforms["tokenizer"] == "python" and platforms["int8-max-ort"] == "onnxruntime_onnx"
    assert platforms["int8-max-cpu-text"] == "ensemble"
    # the served ONNX files are the run's own, and names/types/dims match them exactly: the CPU target
    # (ONNX Runtime in the Python backend) serves the fused engine graph the run scored and timed there
    for m in repo.models:
        kind = ("fused" if m.name.endswith("-cpu") else "") or ("" if m.variant == "float" else "qdq")
        src = embedding_run / "models" / f"{m.variant}.{kind}.onnx".replace("..", ".")
        served = repo_dir / m.name / "1" / "model.onnx"
        assert served.read_bytes() == src.read_bytes()
        ins, outs = onnx_signature(src)
        cfg = parse_config((repo_dir / m.name / "config.pbtxt").read_text())
        check_model_config(cfg, ins, outs, m.name)
        assert [o.name for o in cfg.output] == ["embeddings"] and list(cfg.output[0].dims) == [32]
    tok = repo_dir / "tokenizer" / "1"
    assert (tok / "model.py").is_file() and (tok / "tokenizer" / "tokenizer.json").is_file()
    # int8 -> TensorRT accelerator only for GPU instances; the fixture asked for CPU instances
    ort = parse_config((repo_dir / "int8-max-ort" / "config.pbtxt").read_text())
    assert ort.instance_group[0].kind == ort.instance_group[0].KIND_CPU
    manifest = json.loads((repo_dir / MANIFEST).read_text())
    assert manifest["cpu_models"] == repo.cpu_models()
    # the run's report says what was deployed
    report = json.loads((embedding_run / "report.json").read_text())
    assert {m["name"] for m in report["deployment"]["triton"]["models"]} == names
    assert "## Triton model repository" in (embedding_run / "report.md").read_text()


def test_deploy_all_targets_without_engines(embedding_run: Path, tmp_path: Path) -> None:
    recipe = load_recipe(embedding_run / "recipe.resolved.yaml")
    spec = DeploySpec.model_validate({"targets": ["python-onnxruntime", "onnxruntime", "tensorrt"], "variants": ["best"], "max_batch_size": 4, "preferred_batch_sizes": [2, 4]})
    out = tmp_path / "repo"
    repo = deploy_run(embedding_run, out, recipe=recipe.model_copy(update={"deploy": spec}), build_engines=False, say=lambda _: None)
    by_target = {m.target: m for m in repo.models}
    assert set(by_target) == {"python-onnxruntime", "onnxruntime", "tensorrt"}
    trt = by_target["tensorrt"]
    assert trt.name == "int8-max-trt" and not (out / trt.name / "1" / "model.plan").exists() and "build" in trt.note
    ort = parse_config((out / "int8-max-ort" / "config.pbtxt").read_text())
    (acc,) = ort.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.parameters["precision_mode"] == "INT8"
    assert validate_repository(out)["int8-max-trt"] == "tensorrt_plan"
    # rewriting replaces the repository; a folder that is not one is never replaced
    deploy_run(embedding_run, out, recipe=recipe.model_copy(update={"deploy": spec}), build_engines=False, say=lambda _: None)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(DeployError, match="refusing"):
        deploy_run(embedding_run, foreign, recipe=recipe, say=lambda _: None)
    assert (foreign / "keep.txt").exists()


def test_tensorrt_target_needs_tensorrt_fast(embedding_run: Path) -> None:
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    spec = DeploySpec.model_validate({"targets": ["tensorrt"]})
    with pytest.raises(OptionalDependencyError) as err:
        preflight(spec)
    assert "quant-workbench[tensorrt]" in str(err.value) and "pypi.nvidia.com" in str(err.value)
    preflight(spec, build_engines=False)  # config-only deployment needs no TensorRT


def test_cli_deploy(embedding_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli_repo"
    assert main(["deploy", str(embedding_run), "--out", str(out)]) == 0
    assert "int8-max-cpu-text" in capsys.readouterr().out
    assert Repository.load(out).best_variant == "int8-max"
    assert main(["deploy", str(tmp_path / "nope")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_failed_engine_build_is_recorded_not_fatal(embedding_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quant_workbench.runtime import tensorrt as qtrt

    def failing_build(*args: object, **kwargs: object) -> Path:
        raise qtrt.EngineBuildError("TensorRT could not build an engine from int8-max.qdq.onnx.", ["[I] building", "[E] 2: [virtualMemoryBuffer.cpp::resizePhysical] out of memory"])

    monkeypatch.setattr(qtrt, "require_tensorrt", lambda feature="": None)
    monkeypatch.setattr(qtrt, "build_for_deploy", failing_build)
    recipe = load_recipe(embedding_run / "recipe.resolved.yaml")
    spec = DeploySpec.model_validate({"targets": ["python-onnxruntime", "tensorrt"], "variants": ["best"]})
    said: list[str] = []
    repo = deploy_run(embedding_run, tmp_path / "repo", recipe=recipe.model_copy(update={"deploy": spec}), say=said.append)
    trt = next(m for m in repo.models if m.target == "tensorrt")
    assert "engine build failed" in trt.note and "out of memory" in trt.note
    assert any("out of memory" in line for line in said)
    assert repo.cpu_models() == ["tokenizer", "int8-max-cpu", "int8-max-cpu-text"]
    validate_repository(tmp_path / "repo")
    failed = json.loads((embedding_run / "report.json").read_text())["deployment"]["triton"]["failed_engines"]
    assert "out of memory" in failed["int8-max/tensorrt"]


def test_engine_summaries_and_triton_benchmark_go_into_the_report(embedding_run: Path, tmp_path: Path) -> None:
    import shutil

    from quant_workbench.report.markdown import update_report

    run = tmp_path / "run"
    shutil.copytree(embedding_run, run)
    update_report(run, "tensorrt_engines", {"int8-max": {"layers": 41, "by_precision": {"int8": 24, "fp16": 15, "fp32": 2}, "seconds": 31.5, "version": "10.13.0"}})
    bench = {
        "protocol": "grpc", "texts": {"count": 256}, "hardware": {"cpu": "Test CPU"},
        "variants": {
            "float": {"sequential_batch1": {"p50_ms": 20.0, "p90_ms": 25.0}, "concurrent": {"clients": 8, "p50_ms": 80.0, "p90_ms": 95.0, "throughput_req_per_s": 100.0, "mean_server_batch": 6.5}},
            "int8-max": {"sequential_batch1": {"p50_ms": 10.0, "p90_ms": 12.0}, "concurrent": {"clients": 8, "p50_ms": 40.0, "p90_ms": 50.0, "throughput_req_per_s": 190.0, "mean_server_batch": 6.9}},
        },
        "speedup_int8_vs_float": {"sequential_p50": 2.0, "concurrent_p50": 2.0, "concurrent_throughput": 1.9},
    }
    update_report(run, "triton_benchmark", bench)
    md = (run / "report.md").read_text()
    assert "| int8-max | Triton tensorrt_plan | 10.13.0 | 41 | int8 24, fp16 15, fp32 2 | 31.5 |" in md
    assert "## Served through Triton" in md and "| int8-max | 10.00 | 12.00 | 40.00 | 50.00 | 190.0 | 6.90 |" in md
    assert "8 client threads" in md and "throughput 1.90×" in md
    # a later update keeps the earlier ones
    assert set(json.loads((run / "report.json").read_text())["deployment"]) >= {"triton", "tensorrt_engines", "triton_benchmark"}
