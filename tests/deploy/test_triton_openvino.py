"""OpenVINO in the Triton repository (issue 17): Triton's `openvino` backend config (validated, not served:
the nvidia-pytriton server has no OpenVINO backend) and a Python-backend model running OpenVINO, served by
the real tritonserver: text in, answers equal to the workbench's own OpenVINO engine on the same graph."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient) is not installed")

from deploy.triton_server import TritonServer, find_tritonserver  # noqa: E402
from quant_workbench.config.recipe import DeploySpec, load_recipe, recipe_from_dict  # noqa: E402
from quant_workbench.deploy import deploy_run  # noqa: E402
from quant_workbench.deploy.triton import Repository, parse_config, validate_repository  # noqa: E402
from quant_workbench.models.loading import tokenize  # noqa: E402
from quant_workbench.runtime.openvino import OvEngine  # noqa: E402

from .conftest import TEXTS, deploy_recipe_dict  # noqa: E402

ATOL = 2e-5
VARIANTS = ["int8-max@openvino", "float@openvino"]


@pytest.fixture(scope="module")
def ov_repo(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_csv: Path) -> tuple[Path, Repository]:
    from quant_workbench.pipeline.run import execute, run_dir_for

    out = tmp_path_factory.mktemp("deploy_ov")
    data = deploy_recipe_dict(out, tiny_bert_dir, tiny_csv, name="tiny_deploy_ov")
    data["engine"].update(runtimes=["onnxruntime", "openvino"], openvino={"precisions": ["f32"]})
    data["references"] = []
    data["quantization"]["compare"] = ["int8"]
    data["deploy"].update(targets=["python-openvino", "openvino"], variants=[*VARIANTS, "int8-max"])
    recipe = recipe_from_dict(data)
    execute(recipe, progress=False, say=lambda _: None)
    run_dir = run_dir_for(recipe)
    return run_dir, Repository.load(run_dir / "triton")


def test_openvino_targets_write_valid_configs_with_the_rows_graph(ov_repo: tuple[Path, Repository]) -> None:
    run_dir, repo = ov_repo
    by = {m.name: m for m in repo.models}
    assert {"int8-max.openvino-ov-cpu", "int8-max.openvino-ov", "float.openvino-ov-cpu", "float.openvino-ov"} <= set(by)
    assert validate_repository(repo.path)["int8-max.openvino-ov"] == "openvino"
    cfg = parse_config((repo.path / "int8-max.openvino-ov" / "config.pbtxt").read_text())
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.onnx"
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"INFERENCE_NUM_THREADS": "1", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    assert "no f32 hint" in by["int8-max.openvino-ov"].note and not by["int8-max.openvino-ov"].cpu_servable
    py = parse_config((repo.path / "int8-max.openvino-ov-cpu" / "config.pbtxt").read_text())
    assert {k: v.string_value for k, v in py.parameters.items()}["inference_precision"] == "f32"
    # the OpenVINO row serves its own graph: the Q/DQ export with the attention matmuls quantized too
    served = (repo.path / "int8-max.openvino-ov-cpu" / "1" / "model.onnx").read_bytes()
    assert served == (run_dir / "models" / "int8-max.qk.qdq.onnx").read_bytes()
    # an ONNX Runtime row deployed on OpenVINO: its portable Q/DQ export, said so
    best = next(m for m in repo.models if m.variant == "int8-max" and m.target == "python-openvino")
    assert "portable ONNX" in best.note
    assert (repo.path / best.name / "1" / "model.onnx").read_bytes() == (run_dir / "models" / "int8-max.qdq.onnx").read_bytes()


def test_bf16_rows_ask_the_openvino_backend_for_bf16(ov_repo: tuple[Path, Repository], tmp_path: Path) -> None:
    run_dir, _ = ov_repo
    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    spec = DeploySpec.model_validate({"targets": ["openvino", "python-openvino"], "variants": ["int8-max@openvino"], "max_batch_size": 4, "preferred_batch_sizes": [2, 4]})
    from quant_workbench.report.schema import load_report

    result = load_report(run_dir)
    row = result.variant("int8-max@openvino")
    assert row is not None
    row.inference_precision = "bf16"  # as a bf16 row of a run on a bf16 CPU would be
    repo = deploy_run(run_dir, tmp_path / "repo", recipe=recipe.model_copy(update={"deploy": spec}), result=result, say=lambda _: None)
    cfg = parse_config((repo.path / "int8-max.openvino-ov" / "config.pbtxt").read_text())
    assert cfg.parameters["HINT_BF16"].string_value == "YES"
    py = parse_config((repo.path / "int8-max.openvino-ov-cpu" / "config.pbtxt").read_text())
    assert py.parameters["inference_precision"].string_value == "bf16"


def _reference(run_dir: Path, graph: str, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    tok = AutoTokenizer.from_pretrained(recipe.model.location)
    with OvEngine(run_dir / graph, recipe.engine, graph, inference_precision="f32") as eng:
        return np.concatenate([eng(tokenize(tok, [t], recipe.model.max_seq_length, eng.input_names)) for t in texts])


@pytest.fixture(scope="module")
def served(ov_repo: tuple[Path, Repository]) -> Iterator[TritonServer]:
    if find_tritonserver() is None:
        pytest.skip("no tritonserver binary: pip install 'quant-workbench[triton]'")
    _, repo = ov_repo
    server = TritonServer(repo.path, repo.cpu_models())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.triton
def test_the_python_openvino_model_serves_the_runs_answers(ov_repo: tuple[Path, Repository], served: TritonServer) -> None:
    import tritonclient.http as httpclient

    run_dir, repo = ov_repo

    def infer(model: str, texts: list[str]) -> np.ndarray:
        client = httpclient.InferenceServerClient(served.http_url)
        try:
            inp = httpclient.InferInput("text", [len(texts), 1], "BYTES")
            inp.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))
            return np.asarray(client.infer(model, [inp]).as_numpy("embeddings"))
        finally:
            client.close()

    expected = _reference(run_dir, "models/int8-max.qk.qdq.onnx", TEXTS)
    model = repo.ensemble("int8-max@openvino", "python-openvino")
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(infer(model, [text])[0], expected[i], atol=ATOL, err_msg=text)
    # concurrent single-text requests of different lengths are batched (ragged, padded) and stay correct
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: (i, infer(model, [TEXTS[i % len(TEXTS)]])), range(24)))
    for i, out in got:
        np.testing.assert_allclose(out[0], expected[i % len(TEXTS)], atol=ATOL)
    floats = _reference(run_dir, "models/float.onnx", TEXTS[:2])
    np.testing.assert_allclose(infer(repo.ensemble("float@openvino", "python-openvino"), TEXTS[:2]), floats, atol=ATOL)
    assert not np.allclose(expected[:2], floats, atol=1e-6)  # the INT8 model's answer, not float's
