"""Findings 1, 3, 4, 7 and 9 on a real (tiny) pipeline: corrupt artifacts are rebuilt, a kill -9
mid-write leaves nothing behind after the next run, a run folder is locked, artifacts are readable by
others, and a run with no successful quantized variant exits 3.

One finished run of the tiny model (conftest.py `base`, shared with the deploy tests) is copied by
each test (fixed --run-id, so the copy is the same run folder for the workbench).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from quant_workbench.core.artifacts import TEMP_MARK
from quant_workbench.report.schema import report_problems

from .helpers import RUN_ID, copy_run, one_paragraph_error, run_cli

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _report(run_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((run_dir / "report.json").read_text())
    return report


def test_truncated_onnx_is_rebuilt_not_trusted(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    recipe, run_dir = copy_run(base[0], tmp_path, base[1])
    originals = {}
    for name in ("float.onnx", "int8-max.qdq.onnx"):  # float.onnx used to block every re-run, int8 to fail it
        target = run_dir / "models" / name
        originals[name] = target.read_bytes()
        target.write_bytes(originals[name][: len(originals[name]) // 3])  # its .key sidecar still matches the inputs
    (cache,) = (tmp_path / "calibration").glob("*.npz")
    cached = cache.read_bytes()
    cache.write_bytes(cached[:100])
    code, out, err = run_cli(capsys, str(recipe), "--no-progress", "--run-id", RUN_ID)
    assert code == 0, err
    for name, original in originals.items():
        assert (run_dir / "models" / name).read_bytes() == original  # rebuilt, byte-identical (deterministic export)
    assert cache.read_bytes() == cached  # the calibration statistics too
    report = _report(run_dir)
    assert all(v["status"] == "ok" for v in report["variants"]), report["variants"]
    assert report["best_variant"] == _report(base[0] / "reports" / "tiny" / RUN_ID)["best_variant"]


def test_a_valid_report_matches_the_schema(base: tuple[Path, dict[str, Any]]) -> None:
    assert report_problems(_report(base[0] / "reports" / "tiny" / RUN_ID)) == []


def test_artifacts_are_readable_by_others(base: tuple[Path, dict[str, Any]]) -> None:
    run_dir = base[0] / "reports" / "tiny" / RUN_ID
    modes = {p.relative_to(base[0]): stat.S_IMODE(p.stat().st_mode) for p in [run_dir, *run_dir.rglob("*")]}
    assert modes, "empty run folder"
    bad = {str(p): oct(m) for p, m in modes.items() if m != (0o755 if (base[0] / p).is_dir() else 0o644)}
    assert not bad  # under umask 022: files 0644, folders 0755 (ONNX, report.json, scales were 0600)
    cache = list((base[0] / "calibration").iterdir())
    assert cache and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in cache)


def test_triton_repository_is_readable_by_others(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines", "--out", str(tmp_path / "repo"))
    finally:
        os.umask(old)
    assert code == 0, err
    entries = [tmp_path / "repo", *(tmp_path / "repo").rglob("*")]
    bad = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in entries if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)}
    assert not bad  # the repository root was 0700 (mkdtemp)


_KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {src!r})
    real = os.replace
    def replace(src, dst, *a, **k):
        # kill -9 exactly at a stage boundary: the Q/DQ ONNX is written to its temp file, not yet renamed
        if str(dst).endswith("int8-max.qdq.onnx"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
    from quant_workbench.cli import main
    sys.exit(main([{recipe!r}, "--no-progress", "--run-id", "r"]))
    """
)


def test_kill_9_mid_write_leaves_no_temp_file_after_the_next_run(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    recipe, run_dir = copy_run(base[0], tmp_path, base[1])
    (run_dir / "models" / "int8-max.qdq.onnx").unlink()
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME.format(src=SRC, recipe=str(recipe))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = list(run_dir.rglob(f"*{TEMP_MARK}*"))
    assert len(left) == 1 and left[0].parent.name == "models"  # the killed writer's temp file
    code, out, err = run_cli(capsys, str(recipe), "--no-progress", "--run-id", RUN_ID)
    assert code == 0, err
    assert not list(run_dir.rglob(f"*{TEMP_MARK}*")) and not list(tmp_path.rglob("*.tmp"))
    assert "removed a killed writer's temp file" in out
    assert (run_dir / "models" / "int8-max.qdq.onnx").is_file() and _report(run_dir)["best_variant"]


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from quant_workbench.core.lock import RunLock
    with RunLock({run_dir!r}):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _hold_lock(run_dir: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK.format(src=SRC, run_dir=str(run_dir))], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    recipe, run_dir = copy_run(base[0], tmp_path, base[1])
    before = (run_dir / "report.json").stat().st_mtime_ns
    holder = _hold_lock(run_dir)
    try:
        t0 = time.monotonic()
        code, _, err = run_cli(capsys, str(recipe), "--no-progress", "--run-id", RUN_ID)
        msg = one_paragraph_error(err)
        assert code == 2 and f"PID {holder.pid}" in msg and "started" in msg and "--wait-lock" in msg
        assert time.monotonic() - t0 < 30  # refused before any work
        assert (run_dir / "report.json").stat().st_mtime_ns == before
    finally:
        holder.kill()  # kill -9: the kernel drops its lock, no stale lock file blocks the next run
        holder.wait()
    from quant_workbench.core.lock import RunLock

    with RunLock(run_dir):
        pass


def test_wait_lock_waits_for_the_holder(tmp_path: Path) -> None:
    from quant_workbench.core.lock import RunLock, RunLockedError

    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError):
            RunLock(tmp_path, wait_s=0.5, poll_s=0.1).acquire()
        threading_kill = subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        with RunLock(tmp_path, wait_s=30, poll_s=0.1) as lock:  # waits until the holder is gone
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        threading_kill.wait()
    finally:
        holder.kill()
        holder.wait()


def test_no_successful_quantized_variant_exits_3(
    capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, run_dir = copy_run(base[0], tmp_path, base[1])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("scales exploded\nsecond line that the summary leaves out")

    monkeypatch.setattr("quant_workbench.pipeline.run.set_scales", broken)
    code, _, err = run_cli(capsys, str(recipe), "--no-progress", "--run-id", RUN_ID)
    msg = one_paragraph_error(err)
    assert code == 3
    assert "no quantized variant succeeded" in msg
    assert "int8-max: RuntimeError: scales exploded" in msg
    assert "second line" not in msg
    report = _report(run_dir)
    assert report["best_variant"] is None  # the report is still written


@pytest.mark.parametrize(
    ("content", "expected"),
    [("garbage{", "not readable JSON"), ("{}", "'recipe_name' is missing"), ("[1, 2]", "not an object"), (None, "variants[0].precision")],
)
def test_deploy_validates_report_json(
    capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path, content: str | None, expected: str
) -> None:
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    if content is None:  # a plausible report with one wrong value
        report = copy.deepcopy(_report(run_dir))
        report["variants"][0]["precision"] = "int4"
        content = json.dumps(report)
    (run_dir / "report.json").write_text(content)
    code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines")
    msg = one_paragraph_error(err)
    assert code == 2 and expected in msg and "report.json" in msg
