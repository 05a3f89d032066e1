"""The generated repository served by a real tritonserver (the nvidia-pytriton wheel's, CPU, Python
backend): text in over HTTP and gRPC, single and concurrent requests, answers equal to the
workbench's own ONNX Runtime outputs, clean shutdown."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploy.triton_server import TritonServer, find_tritonserver, group_alive
from quant_workbench.deploy.triton import Repository

from .conftest import TEXTS, reference_outputs

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        find_tritonserver() is None,
        reason="no tritonserver binary: pip install 'quant-workbench[triton]' (the nvidia-pytriton wheel bundles it)",
    ),
]
httpclient = pytest.importorskip("tritonclient.http", reason="the 'triton' extra (tritonclient) is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the 'triton' extra (tritonclient) is not installed")

ATOL = 2e-5


def _text_input(module: Any, texts: list[str]) -> Any:
    inp = module.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))
    return inp


def infer_http(url: str, model: str, texts: list[str], output: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        return np.asarray(client.infer(model, [_text_input(httpclient, texts)]).as_numpy(output))
    finally:
        client.close()


def infer_grpc(url: str, model: str, texts: list[str], output: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        return np.asarray(client.infer(model, [_text_input(grpcclient, texts)]).as_numpy(output))
    finally:
        client.close()


@pytest.fixture(scope="module")
def served(embedding_run: Path) -> Iterator[tuple[TritonServer, Repository]]:
    repo = Repository.load(embedding_run / "triton")
    server = TritonServer(repo.path, repo.cpu_models())
    try:
        server.start()
        yield server, repo
    finally:
        server.stop()


@pytest.fixture(scope="module")
def references(embedding_run: Path) -> dict[str, np.ndarray]:
    return {v: reference_outputs(embedding_run, v, TEXTS) for v in ("float", "int8-max")}


@pytest.mark.parametrize("variant", ["float", "int8-max"])
def test_single_texts_http_and_grpc_equal_onnxruntime(served: tuple[TritonServer, Repository], references: dict[str, np.ndarray], variant: str) -> None:
    server, repo = served
    model = repo.ensemble(variant)
    for i, text in enumerate(TEXTS):
        got_http = infer_http(server.http_url, model, [text], "embeddings")
        got_grpc = infer_grpc(server.grpc_url, model, [text], "embeddings")
        assert got_http.shape == (1, 32) and got_http.dtype == np.float32
        np.testing.assert_allclose(got_http[0], references[variant][i], atol=ATOL, err_msg=f"{variant} http {text!r}")
        np.testing.assert_allclose(got_grpc[0], references[variant][i], atol=ATOL, err_msg=f"{variant} grpc {text!r}")


def test_one_request_with_many_texts(served: tuple[TritonServer, Repository], references: dict[str, np.ndarray]) -> None:
    server, repo = served
    got = infer_grpc(server.grpc_url, repo.ensemble("int8-max"), TEXTS, "embeddings")
    np.testing.assert_allclose(got, references["int8-max"], atol=ATOL)
    # INT8 is not float: the served int8 answer must be the int8 model's, not float's
    assert not np.allclose(references["int8-max"], references["float"], atol=1e-6)


def test_concurrent_requests_are_batched_and_correct(served: tuple[TritonServer, Repository], references: dict[str, np.ndarray]) -> None:
    server, repo = served
    model = repo.ensemble("int8-max")
    stats_client = httpclient.InferenceServerClient(server.http_url)

    def counts() -> tuple[int, int]:
        s = stats_client.get_inference_statistics("int8-max-cpu")["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    before = counts()
    jobs = [(i % len(TEXTS), "grpc" if i % 2 else "http") for i in range(48)]

    def one(job: tuple[int, str]) -> tuple[int, np.ndarray]:
        i, proto = job
        fn = infer_grpc if proto == "grpc" else infer_http
        url = server.grpc_url if proto == "grpc" else server.http_url
        return i, fn(url, model, [TEXTS[i]], "embeddings")

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, jobs))
    for i, got in results:
        np.testing.assert_allclose(got[0], references["int8-max"][i], atol=ATOL, err_msg=TEXTS[i])
    # Triton records a request's statistics after its response has left the server, so the last
    # few requests of a burst may not be counted yet when the client already holds every answer
    deadline = time.monotonic() + 15.0
    after = counts()
    while after[0] - before[0] < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(jobs)
    # dynamic batching: several requests (of different lengths: ragged) share one model execution
    assert executions < inferences, f"{inferences} requests ran in {executions} executions: no dynamic batching"
    stats_client.close()


def test_served_metadata_matches_the_manifest(served: tuple[TritonServer, Repository]) -> None:
    server, repo = served
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata(repo.ensemble("float"))
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("text", "BYTES", [-1, 1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("embeddings", "FP32", [-1, 32])]
    model_meta = client.get_model_metadata("float-cpu")
    entry = next(m for m in repo.models if m.name == "float-cpu")
    assert [i["name"] for i in model_meta["inputs"]] == [i["name"] for i in entry.inputs]
    client.close()


def test_bad_request_is_an_error_not_a_crash(served: tuple[TritonServer, Repository]) -> None:
    server, repo = served
    client = httpclient.InferenceServerClient(server.http_url)
    bad = httpclient.InferInput("txt", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    with pytest.raises(Exception, match="txt|unexpected inference input"):
        client.infer(repo.ensemble("float"), [bad])
    client.close()
    assert server.is_running()
    assert infer_http(server.http_url, repo.ensemble("float"), ["still fine"], "embeddings").shape == (1, 32)


def test_classifier_logits(classifier_run: Path) -> None:
    repo = Repository.load(classifier_run / "triton")
    texts = TEXTS[:4]
    expected = reference_outputs(classifier_run, "int8-max", texts)
    with TritonServer(repo.path, [repo.tokenizer, "int8-max-cpu", "int8-max-cpu-text"]) as server:
        got = infer_grpc(server.grpc_url, "int8-max-cpu-text", texts, "logits")
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_stop_leaves_no_process_and_no_shared_memory(embedding_run: Path) -> None:
    repo = Repository.load(embedding_run / "triton")
    server = TritonServer(repo.path, [repo.tokenizer, "float-cpu", "float-cpu-text"])
    server.start()
    pgid = server.pid
    assert pgid is not None and group_alive(pgid)
    assert glob.glob(f"/dev/shm/{server.shm_prefix}*"), "the Python backend should have shared memory regions"
    workdir = server.workdir
    server.stop()
    assert not group_alive(pgid)
    assert not glob.glob(f"/dev/shm/{server.shm_prefix}*")
    assert workdir is not None and not workdir.exists()
    server.stop()  # idempotent


def test_a_model_that_fails_to_load_reports_the_log(embedding_run: Path, tmp_path: Path) -> None:
    import shutil

    from deploy.triton_server import TritonServerError

    repo_dir = tmp_path / "broken"
    shutil.copytree(embedding_run / "triton" / "tokenizer", repo_dir / "tokenizer")
    (repo_dir / "tokenizer" / "1" / "tokenizer" / "tokenizer.json").unlink()
    (repo_dir / "tokenizer" / "1" / "tokenizer" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TritonServerError, match="tokenizer") as err:
        TritonServer(repo_dir, ["tokenizer"], startup_timeout_s=60).start()
    assert "exited" in str(err.value) or "not ready" in str(err.value)
