"""Shared helpers of the reliability tests: run the CLI in-process, copy a finished run, read one error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from quant_workbench.cli import main

RUN_ID = "r"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_paragraph_error(err: str) -> str:
    """stderr ends with one `error: ...` paragraph and holds no traceback; returned unwrapped."""
    assert "Traceback" not in err, err
    # "error:" then a space, or a line break when a long path does not fit on the first line
    found = re.search(r"error:\s", err)
    assert found is not None, err
    start = found.start()
    text = err[start:].strip()
    assert "\n\n" not in text, err
    return " ".join(text.split())


def write_recipe(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def copy_run(base: Path, dest: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """A private copy of a finished run (reports + calibration cache) and its recipe pointing at it."""
    shutil.copytree(base / "reports", dest / "reports", symlinks=True)
    shutil.copytree(base / "calibration", dest / "calibration", symlinks=True)
    data = {**data, "output_dir": str(dest / "reports")}
    data["quantization"] = {**data["quantization"], "calibration": {**data["quantization"]["calibration"], "cache_dir": str(dest / "calibration")}}
    return write_recipe(dest, data), dest / "reports" / data["name"] / RUN_ID
