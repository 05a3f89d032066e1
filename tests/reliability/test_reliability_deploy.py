"""Issue 20, findings 5 and 6 on `quantize deploy`: it trusts nothing on disk.

Every file it ships is checked against the sha256 its run recorded in the `.key` sidecar (a damaged or
tampered model is refused, never copied into a repository), the repository is written to a temporary
folder and moved into place only when complete and valid, and every user-side problem (an existing file
as --out, a damaged run, a variant that does not exist) is one paragraph with exit code 2. Also the
scales files' names (finding 7) on a real run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import RUN_ID, copy_run, one_paragraph_error, run_cli


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "zeroed":  # 64 zero bytes in the middle: the file still parses, the weights are wrong
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(64)
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("target", "how"), [("int8-max.fused.onnx", "zeroed"), ("int8-max.qdq.onnx", "truncated"), ("float.fused.onnx", "truncated")])
def test_a_damaged_or_tampered_model_is_never_shipped(
    capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path, target: str, how: str
) -> None:
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    _damage(run_dir / "models" / target, how)
    out = tmp_path / "repo"
    code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines", "--out", str(out))
    msg = one_paragraph_error(err)
    assert code == 2 and target in msg and "sha256" in msg and "re-run the recipe" in msg
    assert not out.exists() and not list(tmp_path.glob(".repo.*"))  # nothing half-written left behind


def test_a_damaged_variant_nobody_ships_does_not_stop_the_others(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    _damage(run_dir / "models" / "int8-max.fused.onnx", "zeroed")
    out = tmp_path / "repo"
    code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines", "--out", str(out), "--variants", "float")
    assert code == 0, err
    assert json.loads((out / "repository.json").read_text())["models"][0]["variant"] == "float"


def test_an_existing_file_as_out_is_one_paragraph(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    taken = tmp_path / "a_file"
    taken.write_text("keep me")
    code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines", "--out", str(taken))
    msg = one_paragraph_error(err)  # was NotADirectoryError with a traceback, exit 1
    assert code == 2 and "is a file" in msg and "--out" in msg
    assert taken.read_text() == "keep me"


def test_a_run_folder_that_is_not_one_is_one_paragraph(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for where in (tmp_path / "missing", tmp_path / "f"):
        code, _, err = run_cli(capsys, "deploy", str(where), "--no-engines")
        msg = one_paragraph_error(err)
        assert code == 2 and str(where) in msg and "not a finished run folder" in msg


def test_unknown_variant_hint_names_the_command_line_option(capsys: pytest.CaptureFixture[str], base: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The hint used to name the recipe field deploy.variants, which `quantize deploy` has no option for."""
    _, run_dir = copy_run(base[0], tmp_path, base[1])
    code, _, err = run_cli(capsys, "deploy", str(run_dir), "--no-engines", "--variants", "int8-nope", "--out", str(tmp_path / "repo"))
    msg = one_paragraph_error(err)
    assert code == 2 and "'int8-nope'" in msg and "--variants float int8-max" in msg


def test_scales_files_use_the_plan_names(base: tuple[Path, dict[str, Any]]) -> None:
    run_dir = base[0] / "reports" / "tiny" / RUN_ID
    scales = json.loads((run_dir / "models" / "int8-max.scales.json").read_text())["amax"]
    plan = json.loads((run_dir / "quant_plan.json").read_text())
    enabled = {f"{p['module']}.input_quantizer" for p in plan if p["enabled"]}
    assert set(scales) == enabled  # no `hf.` prefix the plan does not have
