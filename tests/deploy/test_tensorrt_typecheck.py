"""mypy on runtime/tensorrt.py against the `tensorrt-stubs` package, so TensorRT API misuse is caught
without TensorRT or a GPU. The stubs need repairs before mypy can read them (see trt_stubs.py); a
deliberate misuse proves they are really in effect (not silently treated as `Any`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .trt_stubs import prepare_stubs, stub_sources

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (tomllib) reads the project's mypy settings")

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "src" / "quant_workbench" / "runtime" / "tensorrt.py"

pytestmark = pytest.mark.skipif(stub_sources() is None, reason="tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")

MISUSE = '''
import tensorrt as trt


def misuse(config: trt.IBuilderConfig) -> None:
    config.set_memory_pool_limit("workspace", 1 << 30)
    config.max_workspace_size = 1 << 30
'''


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _config(tmp: Path, stubs: Path) -> Path:
    """The project's [tool.mypy] settings plus the stub path; errors inside the stubs are not ours."""
    settings = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"])
    settings.pop("overrides", None)
    # the stubs, and this checkout's package (not whichever one the interpreter's site-packages would give)
    settings["mypy_path"] = [str(stubs), str(ROOT / "src")]
    settings["cache_dir"] = str(tmp / "mypy_cache")
    lines = ["[tool.mypy]"] + [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    lines += ["", "[[tool.mypy.overrides]]", 'module = ["tensorrt", "tensorrt.*", "tensorrt_bindings", "tensorrt_bindings.*"]', "ignore_errors = true"]
    # the check is about TensorRT's API: heavy libraries are not followed (their types become Any)
    lines += ["", "[[tool.mypy.overrides]]", 'module = ["torch", "torch.*", "transformers", "transformers.*", "onnx", "onnx.*", "modelopt", "modelopt.*"]', 'follow_imports = "skip"']
    path = tmp / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tensorrt_module_type_checks_against_the_stubs(tmp_path: Path) -> None:
    from mypy import api

    stubs = prepare_stubs(tmp_path / "stubs")
    misuse = tmp_path / "misuse.py"
    misuse.write_text(MISUSE)
    out, err, code = api.run(["--config-file", str(_config(tmp_path, stubs)), "--python-executable", sys.executable, str(MODULE), str(misuse)])
    lines = [x for x in out.splitlines() if ": error:" in x]
    ours = [x for x in lines if "misuse.py" not in x]
    assert not ours, "\n".join(ours)
    # the stubs are in effect: both misuses are reported
    assert any('"set_memory_pool_limit"' in x and "MemoryPoolType" in x for x in lines), out + err
    assert any("max_workspace_size" in x for x in lines), out + err
