"""OpenVINO engines (CPU plugin): the workbench's ONNX files read directly, no conversion step.

- Compiled with every property explicit (`engine.openvino`: threads, streams, performance hint, CPU
  pinning) and the row's inference precision (`INFERENCE_PRECISION_HINT`, f32 or bf16), with the
  ONNX file's dynamic batch and sequence axes kept: one compiled model serves every shape.
- Reading the ONNX file directly was measured against converting it to OpenVINO IR once
  (`ov.convert_model` + `save_model`) on the default recipe's files, 2 threads: IR read 19-28 ms vs
  176-209 ms from ONNX, compile 255-319 ms vs 299-554 ms; the conversion itself took 1.1-2.8 s. A run
  opens each graph 3-4 times (check, summary, evaluation, benchmark), which saves less than the
  conversion costs, so there is no IR artifact to keep current.
- A compile-time crash (OpenVINO is not validated on AMD CPUs; a segfault cannot be caught) is found
  in a child process first (`compile_check`): the same read, compile and one inference, cached by the
  file's sha256 + properties + OpenVINO version + CPU in `<model folder>/.openvino/`. A crash or error
  there raises `EngineCompileError` naming the signal; the row fails, the run goes on.
- Threads: OpenVINO's TBB workers wait actively for about 1 ms (one core) after an inference (measured
  on the development machine: 0.21 cores busy in the 5 ms after a b1 inference, 0.01 in the 100 ms
  after), against ONNX Runtime's default spinning (1.0 core for 20 ms, 0.43 over 100 ms), which is
  why ONNX Runtime sessions run with `allow_spinning = 0`. OpenVINO has no property to turn that wait
  off; `bench/openvino_table.py` measures its effect on an ONNX Runtime session timed next (A/A control).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from quant_workbench.config.recipe import EngineSpec, Recipe
from quant_workbench.core.artifacts import sha256_file, write_json
from quant_workbench.core.errors import OptionalDependencyError, WorkbenchError
from quant_workbench.core.machine import openvino_cpu_facts, openvino_supports
from quant_workbench.runtime.base import BACKENDS, Engine, EngineBackend
from quant_workbench.runtime.openvino_runtime import compile_properties, runtime_summary

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 600
CHILD = Path(__file__).with_name("openvino_runtime.py")


class EngineCompileError(WorkbenchError):
    """OpenVINO could not compile (or crashed compiling) a model."""


def require_openvino(feature: str = "OpenVINO engines") -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise OptionalDependencyError("openvino", "openvino", feature) from exc
    return ov


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolved_threads(spec: EngineSpec, threads: int | None = None) -> int:
    """INFERENCE_NUM_THREADS: the caller's (benchmark.threads), else engine.openvino.threads, else
    engine.threads, else every core this process may use; always explicit."""
    for n in (threads, spec.openvino.threads, spec.threads):
        if n:
            return int(n)
    return available_cores()


DEFAULT_PRECISION = "default"  # a row that leaves INFERENCE_PRECISION_HINT to OpenVINO (the standard path's reference rows)


def properties(spec: EngineSpec, threads: int | None = None, inference_precision: str | None = None) -> dict[str, Any]:
    """Compile properties of a row: `inference_precision` None = the first of engine.openvino.precisions
    (what a plain row on OpenVINO computes in), "default" = OpenVINO's own choice for this CPU."""
    ov_spec = spec.openvino
    if inference_precision is None:
        inference_precision = row_precisions_of(spec)[0]
    return compile_properties(
        threads=resolved_threads(spec, threads), streams=ov_spec.streams, hint=ov_spec.hint,
        inference_precision=None if inference_precision == DEFAULT_PRECISION else inference_precision, pinning=ov_spec.pinning,
    )


def _precision_name(element_type: Any) -> str:
    text = str(getattr(element_type, "get_type_name", lambda: element_type)())
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(text, text)


# ---------------------------------------------------------------------------------------------
# the compile check in a child process, cached


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _check_key(path: Path, props: dict[str, Any]) -> str:
    st = path.stat()
    facts = openvino_cpu_facts() or {}
    ident = {"file": _file_hash(str(path), st.st_size, st.st_mtime_ns), "props": props, "openvino": facts.get("version"), "cpu": facts.get("device")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _cache_file(path: Path, key: str) -> Path:
    return path.parent / ".openvino" / f"{path.name}.{key[:16]}.json"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def compile_check(path: Path, props: dict[str, Any], name: str = "") -> dict[str, Any]:
    """Compile and run `path` once with `props` in a child process (cached): its runtime summary.

    Raises EngineCompileError when the child crashes (a signal), fails or hangs; a failure is cached
    too, so a model that crashes OpenVINO on this machine is not compiled again in a resumed run."""
    path = Path(path)
    key = _check_key(path, props)
    cache = _cache_file(path, key)
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key:
            if not stored.get("ok"):
                raise EngineCompileError(str(stored.get("error")), "see the engine's failure in the report; other engines' rows are unaffected")
            return stored
    what = f"OpenVINO {'(' + name + ') ' if name else ''}compiling {path.name} with {props}"
    try:
        done = subprocess.run(
            [sys.executable, str(CHILD), str(path), json.dumps(props)],
            capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    except subprocess.TimeoutExpired:
        result: dict[str, Any] = {"ok": False, "error": f"{what} did not finish within {CHECK_TIMEOUT_S} s (child process killed)"}
    else:
        if done.returncode == 0:
            try:
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                result = {"ok": False, "error": f"{what}: the check printed no result ({done.stdout[-300:]!r})"}
        else:
            tail = " | ".join(line for line in done.stderr.strip().splitlines()[-6:] if line.strip())
            how = f"crashed with {_signal_name(done.returncode)}" if done.returncode < 0 else f"failed (exit code {done.returncode})"
            result = {"ok": False, "error": f"{what} {how} in a child process: {tail or 'no message'}"}
    result["key"] = key
    write_json(cache, result)
    if not result.get("ok"):
        raise EngineCompileError(str(result["error"]), "this engine's row fails; the run goes on with the other engines and rows")
    return result


# ---------------------------------------------------------------------------------------------
# the engine


class OvEngine:
    """A compiled OpenVINO model over one artifact (ONNX or IR); `engine(feed) -> first output`."""

    def __init__(
        self,
        model: Path,
        spec: EngineSpec,
        name: str = "openvino",
        *,
        threads: int | None = None,
        inference_precision: str | None = None,
        check: bool | None = None,
    ) -> None:
        ov = require_openvino()
        self.name = name
        self.path = Path(model)
        self.props = properties(spec, threads, inference_precision)
        self.requested_precision = inference_precision
        self.check = compile_check(self.path, self.props, name) if (spec.openvino.compile_check if check is None else check) else None
        try:
            core = ov.Core()
            self.model = core.read_model(str(self.path))
            self.compiled = core.compile_model(self.model, "CPU", self.props)
        except Exception as exc:
            raise EngineCompileError(f"OpenVINO cannot compile {name} ({self.path.name}): {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.model.inputs]
        self.output_names = [p.get_any_name() for p in self.model.outputs]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self.request.infer({k: v for k, v in feed.items() if k in self.input_names})
        # the output tensor's memory is reused by the next inference
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def applied(self) -> dict[str, Any]:
        """The properties as the compiled model reports them (what OpenVINO actually applied)."""
        get = self.compiled.get_property
        return {
            "inference_precision": _precision_name(get("INFERENCE_PRECISION_HINT")),
            "threads": int(get("INFERENCE_NUM_THREADS")),
            "streams": int(get("NUM_STREAMS")),
            "hint": str(get("PERFORMANCE_HINT")).rsplit(".", 1)[-1].lower(),
            "pinning": bool(get("ENABLE_CPU_PINNING")),
        }

    def summary(self) -> dict[str, Any]:
        return runtime_summary(self.compiled, self.model)

    def describe(self) -> dict[str, Any]:
        facts = openvino_cpu_facts() or {}
        return {"backend": "openvino", "version": facts.get("version"), "device": facts.get("device"), **self.applied()}

    def __enter__(self) -> OvEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.request, self.compiled


# ---------------------------------------------------------------------------------------------
# registry entry


def row_precisions_of(spec: EngineSpec) -> list[str | None]:
    """One row per precision: f32, plus bf16 where OpenVINO and this CPU support it (engine.openvino.precisions: auto)."""
    wanted = spec.openvino.precisions
    if wanted == "auto":
        return ["f32", "bf16"] if openvino_supports("bf16") else ["f32"]
    return list(wanted)


def row_precisions(recipe: Recipe) -> list[str | None]:
    return row_precisions_of(recipe.engine)


def quantized_row_precisions(recipe: Recipe) -> list[str | None]:
    """A quantized variant's rows: with `auto`, one row whose float leftovers run in bf16 where this CPU and
    OpenVINO support it (else f32). Measured on the default recipe (docs/openvino.md): the f32-leftover rows
    were never faster than the bf16 ones beyond the 3 % margin and within 0.05-0.16 pt of their accuracy, and
    with both present the pick between two rows of one graph followed timing noise. An explicit list gives
    every listed precision, as for float."""
    wanted = recipe.engine.openvino.precisions
    if wanted == "auto":
        return ["bf16"] if openvino_supports("bf16") else ["f32"]
    return list(wanted)


def _preflight(recipe: Recipe) -> None:
    require_openvino("engine.runtime(s): openvino")
    if openvino_cpu_facts() is None or "capabilities" not in (openvino_cpu_facts() or {}):
        raise WorkbenchError(
            f"OpenVINO is installed but its CPU device is not usable here: {(openvino_cpu_facts() or {}).get('error', 'no CPU device')}.",
            "reinstall openvino, or remove openvino from engine.runtimes",
        )
    wanted = recipe.engine.openvino.precisions
    missing = [p for p in (wanted if wanted != "auto" else []) if not openvino_supports(p)]
    if missing:
        raise WorkbenchError(
            f"engine.openvino.precisions asks for {missing[0]}, which OpenVINO's CPU plugin cannot compute on this machine "
            f"(capabilities {(openvino_cpu_facts() or {}).get('capabilities')}; bf16 also needs avx512_bf16 or amx_bf16).",
            "set engine.openvino.precisions: auto (bf16 rows where supported) or [f32]",
        )


def _open(onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None, inference_precision: str | None = None) -> Engine:
    return OvEngine(onnx_path, recipe.engine, name, threads=threads, inference_precision=inference_precision)


def _summary(onnx_path: Path, recipe: Recipe, *, inference_precision: str | None = None) -> dict[str, Any]:
    """From the (cached) compile check when it runs, so no second compile here."""
    props = properties(recipe.engine, None, inference_precision)
    if recipe.engine.openvino.compile_check:
        checked = compile_check(Path(onnx_path), props)
        return {"backend": "openvino", "inference_precision": checked["inference_precision"], **checked["summary"]}
    with OvEngine(Path(onnx_path), recipe.engine, Path(onnx_path).stem, inference_precision=inference_precision, check=False) as eng:
        return {"backend": "openvino", "inference_precision": eng.applied()["inference_precision"], **eng.summary()}


BACKENDS.register(
    "openvino",
    EngineBackend(open=_open, preflight=_preflight, summary=_summary, precisions=row_precisions, quantized_precisions=quantized_row_precisions),
)
