"""Findings 5, 6 and 8: bounds, writability, paths, device and model source are checked before any data
or export work, with a message that names the field and the fix; and the helpers behind findings 1, 3
and 7 (verified reuse, stale temp files, file modes) on their own.

Most recipes here also point at a data file that does not exist: the check under test must fire
first, which proves it runs before the data stage.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny_fixtures import TINY_MAX_POSITIONS

from quant_workbench.core.artifacts import (
    TEMP_MARK,
    artifact_is_current,
    artifact_problem,
    atomic_path,
    cached,
    mark_artifact,
    remove_stale_temp_files,
    write_text,
)
from quant_workbench.pipeline import preflight

from .helpers import one_paragraph_error, run_cli, write_recipe

RecipeFactory = Callable[..., dict[str, Any]]
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def no_data(make_recipe: RecipeFactory, tmp_path: Path) -> dict[str, Any]:
    """A recipe whose data file is missing: any error but the data stage's proves the check came first."""
    data = make_recipe()
    data["data"]["files"] = [str(tmp_path / "missing.csv")]
    return data


def _error(capsys: pytest.CaptureFixture[str], data: dict[str, Any], folder: Path, *extra: str) -> str:
    code, _, err = run_cli(capsys, str(write_recipe(folder, data)), "--no-progress", *extra)
    assert code == 2, err
    msg = one_paragraph_error(err)
    assert "missing.csv" not in msg
    return msg


# ---------------------------------------------------------------- finding 6: paths escape output_dir
def test_run_id_must_be_one_path_segment(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    for run_id in ("../../escaped", "..", "a/b"):
        msg = _error(capsys, no_data, tmp_path, "--run-id", run_id)
        assert "--run-id" in msg and "one path segment" in msg
    assert not list(tmp_path.rglob("escaped"))


def test_recipe_name_dotdot_is_rejected(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    no_data["name"] = ".."
    msg = _error(capsys, no_data, tmp_path)
    assert "'name'" in msg and "'..'" in msg
    assert not (tmp_path / "recipe.resolved.yaml").exists() and not list(tmp_path.rglob("recipe.resolved.yaml"))


def test_run_folder_symlinked_out_of_output_dir_is_refused(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    reports = Path(no_data["output_dir"])
    reports.mkdir(parents=True)
    (reports / "tiny").symlink_to(outside)
    msg = _error(capsys, no_data, tmp_path, "--run-id", "x")
    assert "outside output_dir" in msg
    assert not list(outside.iterdir())


# ---------------------------------------------------------------- finding 5: bounds and writability
def test_huge_benchmark_batch_fails_in_preflight_with_an_estimate(
    capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 1 << 30)  # a 1 GiB machine
    no_data["benchmark"]["batch_sizes"] = [1, 100000]
    msg = _error(capsys, no_data, tmp_path)
    assert "benchmark.batch_sizes" in msg and "batch 100000" in msg and "GiB" in msg and "1.0 GiB is available" in msg
    assert "--set benchmark.batch_sizes=[1," in msg


def test_batch_outside_the_exported_axes_fails_in_preflight(
    capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 1 << 50)  # memory is not what stops it
    no_data["benchmark"]["batch_sizes"] = [1, 5000]
    msg = _error(capsys, no_data, tmp_path)
    assert "batch 5000" in msg and "dynamic axes" in msg and "at most 4096" in msg


def test_memory_estimate_grows_with_batch_and_length() -> None:
    config = {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 12}
    one = preflight.forward_bytes(config, 1, 128)
    assert preflight.forward_bytes(config, 100000, 128) == 100000 * one
    # the case (MiniLM, 100000 x 128) allocated 19.6 GB in one tensor; the estimate must exceed that
    assert preflight.forward_bytes(config, 100000, 128) > 19.6e9


def test_sequence_longer_than_the_model_fails_in_preflight(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    no_data["model"]["max_seq_length"] = TINY_MAX_POSITIONS * 2
    msg = _error(capsys, no_data, tmp_path)
    assert f"limit of {TINY_MAX_POSITIONS} positions" in msg and "model.max_seq_length" in msg


def test_unwritable_cache_dir_fails_before_any_work(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    no_data["quantization"]["calibration"]["cache_dir"] = str(blocker / "cache")
    msg = _error(capsys, no_data, tmp_path)
    assert "quantization.calibration.cache_dir" in msg and "--set quantization.calibration.cache_dir=PATH" in msg


# ---------------------------------------------------------------- finding 8: late or misleading checks
def test_cuda_provider_without_cuda_fails_before_data(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    no_data["engine"]["provider"] = "cuda"
    msg = _error(capsys, no_data, tmp_path)
    assert "engine.provider 'cuda'" in msg


def test_uncached_hub_model_fails_at_once_offline(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the CLI's default applies: offline
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    no_data["model"]["source"] = "qwb-tests/no-such-model"
    t0 = time.monotonic()
    msg = _error(capsys, no_data, tmp_path)
    assert time.monotonic() - t0 < 10  # no network retries
    assert "qwb-tests/no-such-model" in msg and "HF_HUB_OFFLINE=0" in msg


def test_broken_config_json_gets_a_local_hint(capsys: pytest.CaptureFixture[str], no_data: dict[str, Any], tmp_path: Path, tiny_bert_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (model / "config.json").write_text('{"hidden_size": 32,')
    no_data["model"]["source"] = str(model)
    msg = _error(capsys, no_data, tmp_path)
    assert "config.json" in msg and "not valid JSON" in msg and "Hub" not in msg and "network" not in msg


def test_recipe_path_that_is_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, str(tmp_path))
    msg = one_paragraph_error(err)
    assert code == 2 and "is a folder" in msg and "does not exist" not in msg


def test_missing_label_column_hint_does_not_point_at_the_text_column(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, str(write_recipe(tmp_path, make_recipe())), "--no-progress", "--set", "data.label_column=texts")
    msg = one_paragraph_error(err)
    assert code == 2 and "no column 'texts'" in msg and "data.label_column=text" not in msg


# ---------------------------------------------------------------- findings 1, 3, 7: the io helpers
def test_reuse_needs_key_hash_and_structure(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_text(path, json.dumps({"x": 1}))
    mark_artifact(path, "k1")
    assert artifact_is_current(path, "k1") and not artifact_is_current(path, "k2")
    path.write_text('{"x": ')  # truncated behind the sidecar's back
    assert "content hash" in (artifact_problem(path, "k1") or "")
    mark_artifact(path, "k1")  # hash now matches, but the file does not load
    assert (artifact_problem(path, "k1") or "").startswith("does not load")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07garbage")
    mark_artifact(onnx_file, "k")
    assert not artifact_is_current(onnx_file, "k")
    (tmp_path / "old.onnx").write_bytes(b"x")
    (tmp_path / "old.onnx.key").write_text("k\n")  # an older workbench's sidecar: no hash, so rebuilt once
    assert not artifact_is_current(tmp_path / "old.onnx", "k")


def test_files_built_together_are_reused_only_together(tmp_path: Path) -> None:
    xml, weights = tmp_path / "m.xml", tmp_path / "m.bin"
    builds: list[int] = []

    def build() -> None:
        builds.append(1)
        write_text(xml, "<net/>")
        write_text(weights, f"weights {len(builds)}")

    assert cached(xml, "k", build, also=[weights])
    assert not cached(xml, "k", build, also=[weights]) and len(builds) == 1
    weights.unlink()  # the .bin lost: the pair is rebuilt, not the .xml served alone
    assert cached(xml, "k", build, also=[weights]) and len(builds) == 2
    assert artifact_is_current(weights, "k") and artifact_is_current(xml, "k")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = write_text(tmp_path / "sub" / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o777 & ~umask


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from quant_workbench.core.artifacts import atomic_path
    with atomic_path({target!r}) as tmp:
        tmp.write_bytes(b"half an artifact")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_stale_temp_files_of_killed_writers_only_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "search" / "trials" / "abc.qdq.onnx"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER.format(src=SRC, target=str(target))], timeout=120)
    assert proc.returncode < 0
    stale = list(target.parent.glob(f"*{TEMP_MARK}*"))
    assert len(stale) == 1 and not target.exists()
    user_tmp = target.parent / ".notes.tmp"
    user_tmp.write_text("the user's own")
    with atomic_path(tmp_path / "live.json") as live:  # a live writer (this process) is left alone
        live.write_text("{}")
        removed = remove_stale_temp_files(tmp_path)
        assert live.exists()
    assert removed == stale and not stale[0].exists() and user_tmp.exists()


def test_a_run_failing_before_its_first_artifact_leaves_no_folder(
    capsys: pytest.CaptureFixture[str], make_recipe: RecipeFactory, tmp_path: Path
) -> None:
    data = make_recipe()
    data["data"]["label_column"] = "nope"  # fails in the data stage, after the run folder was made
    code, _, err = run_cli(capsys, str(write_recipe(tmp_path, data)), "--no-progress", "--run-id", "x")
    assert code == 2, err
    assert not (Path(data["output_dir"]) / "tiny" / "x").exists()
