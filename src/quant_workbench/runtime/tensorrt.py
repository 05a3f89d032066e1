"""TensorRT engines (TensorRT 10 and 11 Python API): build from Q/DQ ONNX, inspect, run.

- `build_engine(onnx, plan, BuildSettings(...))`: explicit quantization from the Q/DQ ONNX. On
  TensorRT 10 the network is weakly typed with the INT8 flag (Q/DQ decide what runs in INT8) plus FP16
  for the float parts; the FP16 baseline is the float ONNX with FP16 alone. TensorRT 11 has no
  precision flags (strong typing only): the Q/DQ nodes give INT8, and FP16 needs the ONNX converted to
  mixed precision first (ModelOpt AutoCast, `nvidia-modelopt`). One optimization profile (min/opt/max
  batch x sequence) covers every input; the workspace is set through the WORKSPACE memory pool; a
  timing cache file is loaded before and saved after every build; builder optimization level and
  version-compatible plans are settings.
  Beside `<name>.plan` it writes `<name>.plan.json` (TensorRT version, GPU, settings, I/O) and
  `<name>.layers.json` (the engine inspector's per-layer report, built with DETAILED verbosity), and
  returns a summary of which layers run in INT8 / FP16 / FP32.
- A failed build raises EngineBuildError carrying the TensorRT log lines that explain it (captured
  by a custom ILogger); callers mark that trial failed and go on.
- `TrtEngine(plan)`: the Engine protocol of runtime/base.py over the name-based tensor API
  (set_input_shape, set_tensor_address, execute_async_v3) with torch CUDA tensors as buffers.
  A plan built by another TensorRT version is refused with a clear message (PlanVersionError).

`import tensorrt` happens only inside these functions; without it every entry point raises
OptionalDependencyError naming the extra and NVIDIA's install route.
"""

from __future__ import annotations

import json
import platform
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant_workbench.config.catalog import SCHEMES
from quant_workbench.core.artifacts import write_bytes, write_json
from quant_workbench.core.errors import OptionalDependencyError, WorkbenchError
from quant_workbench.core.results import Precision
from quant_workbench.core.signatures import TRT_TO_TRITON, TensorSig
from quant_workbench.runtime.base import BACKENDS, EngineBackend

if TYPE_CHECKING:
    import tensorrt as trt

    from quant_workbench.config.recipe import DeploySpec, Recipe, TensorRTSpec
    from quant_workbench.runtime.base import Engine

INSTALL_HINT = (
    " — TensorRT comes from NVIDIA's package index: pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt-cu12 (CUDA 12) or tensorrt-cu13, on Linux with an NVIDIA GPU and driver; or use an NGC "
    "container (nvcr.io/nvidia/tensorrt) where it is preinstalled"
)
LOG_LINES_KEPT = 400


class EngineBuildError(WorkbenchError):
    """TensorRT could not parse the ONNX model or build the engine; `log` holds TensorRT's own lines."""

    def __init__(self, message: str, log: list[str] | None = None, hint: str | None = None) -> None:
        self.log = list(log or [])
        shown = [line for line in self.log if line.startswith(("[E]", "[F]"))] or self.log[-15:]
        if shown:
            message = f"{message} TensorRT says: " + " | ".join(shown[-15:])
        super().__init__(message, hint or "see the TensorRT lines above; a smaller workspace or max shapes, or another opset, may help")


class PlanVersionError(WorkbenchError):
    """A serialized engine built by another TensorRT version (or for another GPU)."""


def require_tensorrt(feature: str = "TensorRT engines") -> None:
    """The `tensorrt` module, or OptionalDependencyError. A stub-only install (tensorrt-stubs leaves an
    empty `tensorrt` namespace package) counts as missing."""
    try:
        import tensorrt as trt_mod
    except ImportError as exc:
        raise OptionalDependencyError("tensorrt", "tensorrt", feature, INSTALL_HINT) from exc
    except OSError as exc:  # the bindings are there but libnvinfer is not loadable
        raise OptionalDependencyError("tensorrt", "tensorrt", f"{feature} (libnvinfer failed to load: {exc})", INSTALL_HINT) from exc
    if not hasattr(trt_mod, "Builder"):
        raise OptionalDependencyError("tensorrt", "tensorrt", feature, INSTALL_HINT)


def tensorrt_version() -> str:
    require_tensorrt()
    import tensorrt as trt

    return str(trt.__version__)


def tensorrt_major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


class LogBuffer:
    """The last LOG_LINES_KEPT TensorRT messages (INFO and above) as '[E] message' lines."""

    TAGS = {"INTERNAL_ERROR": "F", "ERROR": "E", "WARNING": "W", "INFO": "I", "VERBOSE": "V"}

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, severity_name: str, msg: str) -> None:
        with self._lock:
            self.lines.append(f"[{self.TAGS.get(severity_name, '?')}] {msg}")
            del self.lines[:-LOG_LINES_KEPT]

    def errors(self) -> list[str]:
        return [x for x in self.lines if x.startswith(("[E]", "[F]"))]

    def warnings(self) -> list[str]:
        return [x for x in self.lines if x.startswith("[W]")]


def capturing_logger() -> tuple[trt.ILogger, LogBuffer]:
    """A custom trt.ILogger that records into a LogBuffer (the builder's errors end up in exceptions)."""
    require_tensorrt()
    import tensorrt as trt

    buffer = LogBuffer()

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity != trt.ILogger.Severity.VERBOSE:
                buffer.add(severity.name, msg)

    return CapturingLogger(), buffer


# ---------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class Shapes:
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def check(self, where: str = "deploy.tensorrt") -> Shapes:
        for i, axis in enumerate(("batch", "sequence")):
            if not (1 <= self.min[i] <= self.opt[i] <= self.max[i]):
                raise WorkbenchError(
                    f"TensorRT optimization profile {axis}: min {self.min[i]} <= opt {self.opt[i]} <= max {self.max[i]} does not hold.",
                    f"fix {where} min_/opt_/max_ batch and seq",
                )
        return self


FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


@dataclass
class BuildSettings:
    shapes: Shapes
    precision: Precision  # int8/fp8: the ONNX carries Q/DQ nodes of that type (explicit quantization)
    fp16: bool = True
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3
    timing_cache: Path | None = None
    version_compatible: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return d


@dataclass
class BuildReport:
    plan: str
    tensorrt_version: str
    seconds: float
    settings: dict[str, Any]
    strongly_typed: bool
    layers: dict[str, Any] = field(default_factory=dict)  # summary of the inspector report
    timing_cache_hit: bool = False
    warnings: list[str] = field(default_factory=list)
    cached: bool = False  # the plan was reused, not built (plan_from_onnx)


def settings_for_deploy(recipe: Recipe, spec: DeploySpec, precision: Precision) -> BuildSettings:
    t = spec.tensorrt
    max_batch = t.max_batch or spec.max_batch_size
    if max_batch < spec.max_batch_size:
        raise WorkbenchError(
            f"deploy.tensorrt.max_batch={max_batch} is below deploy.max_batch_size={spec.max_batch_size}: "
            "Triton would send batches the engine cannot take.",
            "raise deploy.tensorrt.max_batch or lower deploy.max_batch_size",
        )
    return _settings(recipe, t, max_batch, precision, "deploy.tensorrt")


def settings_for_runtime(recipe: Recipe, precision: Precision) -> BuildSettings:
    """`engine.runtime: tensorrt`: one profile that covers evaluation batches and every benchmark shape."""
    t = recipe.engine.tensorrt
    needed_batch = max([recipe.quantization.calibration.batch_size, *recipe.benchmark.batch_sizes])
    needed_seq = max([recipe.model.max_seq_length, *recipe.benchmark.seq_lengths])
    max_batch = t.max_batch or needed_batch
    if max_batch < needed_batch or (t.max_seq or needed_seq) < needed_seq:
        raise WorkbenchError(
            f"engine.tensorrt max_batch={t.max_batch} / max_seq={t.max_seq} is below what the run feeds the engine "
            f"(batch {needed_batch}: calibration.batch_size and benchmark.batch_sizes; sequence {needed_seq}).",
            "raise engine.tensorrt.max_batch / max_seq, or leave them unset to follow the recipe",
        )
    return _settings(recipe, t, max_batch, precision, "engine.tensorrt", max_seq=t.max_seq or needed_seq)


def _settings(recipe: Recipe, t: TensorRTSpec, max_batch: int, precision: Precision, where: str, max_seq: int | None = None) -> BuildSettings:
    max_seq = max_seq or t.max_seq or recipe.model.max_seq_length
    shapes = Shapes((t.min_batch, t.min_seq), (t.opt_batch or max_batch, t.opt_seq or max_seq), (max_batch, max_seq)).check(where)
    cache = Path(t.timing_cache) if t.timing_cache else Path(recipe.output_dir) / recipe.name / "tensorrt.timing.cache"
    return BuildSettings(
        shapes=shapes,
        precision=precision,
        fp16=t.fp16,
        workspace_bytes=t.workspace_mib << 20,
        optimization_level=t.optimization_level,
        timing_cache=cache,
        version_compatible=t.version_compatible,
    )


def _fp16_onnx(onnx_path: Path, folder: Path) -> Path:
    """TensorRT 11: FP16 for the float parts means an ONNX converted to mixed precision (ModelOpt AutoCast)."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise WorkbenchError(
            "TensorRT 11 has no FP16 builder flag: FP16 engines need the ONNX converted to mixed precision by "
            "ModelOpt AutoCast, which is not installed.",
            "pip install 'nvidia-modelopt[onnx]', or set deploy.tensorrt.fp16: false (float parts stay FP32)",
        ) from exc
    import onnx

    converted = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True)
    out = folder / f"{onnx_path.stem}.fp16.onnx"
    onnx.save_model(converted, str(out), save_as_external_data=converted.ByteSize() > (1 << 31) - 4096)
    return out


def build_engine(onnx_path: Path, plan_path: Path, settings: BuildSettings) -> BuildReport:
    """Parse, configure, build, save plan + timing cache + metadata + inspector report."""
    import tempfile
    import time

    require_tensorrt("building TensorRT engines")
    if settings.precision == "fp8":
        require_fp8_gpu()
    import tensorrt as trt

    logger, log = capturing_logger()
    version = str(trt.__version__)
    strongly_typed = tensorrt_major(version) >= 11
    t0 = time.perf_counter()
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = _fp16_onnx(onnx_path, Path(tmp)) if strongly_typed and settings.fp16 else onnx_path
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [f"[E] {parser.get_error(i)}" for i in range(parser.num_errors)]
            raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}.", errors + log.lines, "an ONNX op or opset TensorRT does not support; see the lines")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
        config.builder_optimization_level = settings.optimization_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if not strongly_typed:  # TensorRT 10: weak typing; Q/DQ nodes still decide what runs in INT8/FP8
            if settings.precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
            if settings.precision == "fp8":
                config.set_flag(trt.BuilderFlag.FP8)
            if settings.fp16:
                config.set_flag(trt.BuilderFlag.FP16)
        if settings.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        profile = builder.create_optimization_profile()
        s = settings.shapes
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if len(tensor.shape) != 2:
                raise EngineBuildError(f"input '{tensor.name}' of {onnx_path.name} has rank {len(tensor.shape)}; the profile covers [batch, sequence] inputs only.")
            profile.set_shape(tensor.name, trt.Dims(list(s.min)), trt.Dims(list(s.opt)), trt.Dims(list(s.max)))
        config.add_optimization_profile(profile)
        cache_hit = False
        if settings.timing_cache is not None:
            blob = settings.timing_cache.read_bytes() if settings.timing_cache.is_file() else b""
            cache_hit = bool(blob)
            if not config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
                notes.append(f"timing cache {settings.timing_cache} was not usable (another GPU or TensorRT version); started a new one")
                config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
                cache_hit = False
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name}.", log.lines)
        plan_bytes = bytes(memoryview(serialized))
        if settings.timing_cache is not None:
            write_bytes(settings.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    write_bytes(plan_path, plan_bytes)
    loaded = _deserialize(plan_bytes, logger, log, settings.version_compatible, plan_path)
    inputs, outputs = _engine_io(loaded.engine)
    meta = {
        "tensorrt_version": version,
        "version_compatible": settings.version_compatible,
        "gpu": _gpu_name(),
        "machine": platform.machine(),
        "onnx": str(onnx_path),
        "settings": settings.to_dict(),
        "strongly_typed": strongly_typed,
        "inputs": [x.to_dict() for x in inputs],
        "outputs": [x.to_dict() for x in outputs],
    }
    write_json(plan_meta_path(plan_path), meta)
    info = loaded.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    layers_path = plan_path.with_name(plan_path.stem + ".layers.json")
    try:
        parsed: Any = json.loads(info)
    except json.JSONDecodeError:
        parsed = {"raw": info}
    write_json(layers_path, parsed)
    return BuildReport(
        plan=str(plan_path),
        tensorrt_version=version,
        seconds=round(time.perf_counter() - t0, 2),
        settings=settings.to_dict(),
        strongly_typed=strongly_typed,
        layers={**summarize_layers(parsed), "report": layers_path.name},
        timing_cache_hit=cache_hit,
        warnings=notes + log.warnings()[-20:],
    )


def engine_precision(variant_precision: str | None) -> Precision:
    """A run variant's precision ("float32", "fp16", "int8", "fp8") as the engine build's: a float row (fp16 too)
    is the float32 build, which engine.tensorrt.fp16 lets TensorRT run in FP16."""
    if variant_precision in ("int8", "fp8"):
        return variant_precision  # type: ignore[return-value]
    return "float32"


def gpu_capability() -> tuple[int, int] | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return int(major), int(minor)
    except Exception:
        return None
    return None


def require_fp8_gpu() -> None:
    """FP8 Q/DQ engines need FP8 tensor cores; elsewhere TensorRT rejects or emulates them."""
    cap = gpu_capability()
    if cap is None or cap < FP8_MIN_CAPABILITY:
        where = f"this GPU ({_gpu_name()}) has compute capability {cap[0]}.{cap[1]}" if cap else "no CUDA GPU is visible"
        raise WorkbenchError(
            f"FP8 TensorRT engines need compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell); {where}.",
            "build the INT8 variants only on this GPU (drop fp8 from quantization.compare), or build on an L4/L40/H100-class GPU",
        )


def plan_from_onnx(onnx_path: Path, plan_path: Path, settings: BuildSettings) -> BuildReport:
    """`build_engine` with a cache: a plan whose `.key` sidecar matches the ONNX bytes, the settings,
    the TensorRT version and the GPU is reused (its saved build report is returned, `cached` set)."""
    from quant_workbench.core.artifacts import cached, hash_json, sha256_file

    key = hash_json({"onnx": sha256_file(onnx_path), "settings": {**settings.to_dict(), "timing_cache": None}, "tensorrt": tensorrt_version(), "gpu": _gpu_name()})
    report_path = build_report_path(plan_path)
    built: list[BuildReport] = []

    def build() -> None:
        built.append(build_engine(onnx_path, plan_path, settings))
        write_json(report_path, asdict(built[0]))

    if cached(plan_path, key, build, also=[report_path]):
        return built[0]
    return BuildReport(**{**json.loads(report_path.read_text()), "cached": True})


def build_for_deploy(recipe: Recipe, spec: DeploySpec, onnx_path: Path, plan_path: Path, *, precision: Precision) -> Path:
    report = build_engine(onnx_path, plan_path, settings_for_deploy(recipe, spec, precision))
    write_json(build_report_path(plan_path), asdict(report))
    return plan_path


# ---------------------------------------------------------------------------------------------
# inspection


_PRECISIONS = (("int8", ("int8",)), ("fp16", ("half", "fp16")), ("bf16", ("bf16",)), ("fp8", ("fp8",)), ("fp32", ("float", "fp32")))


def _tensor_types(entry: Any) -> list[str]:
    """Data types named by one inspector tensor entry: TensorRT 10 writes "Format/Datatype"
    ("Row major linear INT8 format"), TensorRT 11 splits it into "Format" and "DataType"."""
    if not isinstance(entry, dict):
        return []
    out = []
    for key in ("DataType", "Datatype", "Format/Datatype", "Format/DataType"):
        value = entry.get(key)
        if isinstance(value, str):
            out.append(value.lower())
    return out


def layer_precision(layer: dict[str, Any]) -> str:
    """The lowest precision among a layer's inputs and outputs (int8 < fp8 < fp16/bf16 < fp32)."""
    names: list[str] = []
    for side in ("Inputs", "Outputs"):
        for entry in layer.get(side, []) or []:
            names += _tensor_types(entry)
    text = " ".join(names)
    for label, needles in _PRECISIONS:
        if any(n in text for n in needles):
            return label
    return "other"


def summarize_layers(report: Any) -> dict[str, Any]:
    layers = report.get("Layers", []) if isinstance(report, dict) else []
    layers = [x for x in layers if isinstance(x, dict)]  # LAYER_NAMES_ONLY reports are plain strings
    counts: dict[str, int] = {}
    int8_names: list[str] = []
    for layer in layers:
        p = layer_precision(layer)
        counts[p] = counts.get(p, 0) + 1
        if p == "int8":
            int8_names.append(str(layer.get("Name", "")))
    return {"layers": len(layers), "by_precision": dict(sorted(counts.items())), "int8_layers": int8_names[:200]}


def build_report_path(plan: Path) -> Path:
    return plan.with_name(plan.stem + ".build.json")


def build_summary(plan: Path) -> dict[str, Any] | None:
    """The saved build report of a plan, for reports: layer counts per precision (without the long
    list of INT8 layer names), build seconds and TensorRT version; None when it was never built here."""
    path = build_report_path(plan)
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    layers = {k: v for k, v in report.get("layers", {}).items() if k != "int8_layers"}
    return {**layers, "seconds": report.get("seconds"), "version": report.get("tensorrt_version")}


def plan_meta_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def check_plan_version(meta: dict[str, Any], running: str, plan: Path) -> None:
    built = str(meta.get("tensorrt_version", ""))
    if not built or built == running:
        return
    if meta.get("version_compatible") and tensorrt_major(built) == tensorrt_major(running) and _version_tuple(running) >= _version_tuple(built):
        return
    raise PlanVersionError(
        f"{plan} was built by TensorRT {built}; this is TensorRT {running}. A TensorRT plan loads only in the "
        "version that built it (version-compatible plans: the same major version, same or newer).",
        "rebuild the engine on this machine (quantize deploy RUN_DIR), or build with deploy.tensorrt.version_compatible: true",
    )


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


@dataclass
class LoadedPlan:
    engine: trt.ICudaEngine
    runtime: trt.Runtime  # kept alive as long as the engine
    logger: trt.ILogger
    log: LogBuffer


def _deserialize(plan_bytes: bytes, logger: trt.ILogger, log: LogBuffer, version_compatible: bool, plan: Path) -> LoadedPlan:
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        lines = log.errors() or log.lines[-10:]
        text = " ".join(lines).lower()
        if "version" in text or "magic" in text or "serialization" in text:
            raise PlanVersionError(
                f"{plan} cannot be loaded by TensorRT {trt.__version__}: it was built by another TensorRT version or for another GPU ({' | '.join(lines)}).",
                "rebuild the engine on this machine (quantize deploy RUN_DIR)",
            )
        raise EngineBuildError(f"TensorRT cannot deserialize {plan}.", lines)
    return LoadedPlan(engine, runtime, logger, log)




def _dims(d: trt.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]


def _engine_io(engine: trt.ICudaEngine) -> tuple[list[TensorSig], list[TensorSig]]:
    import tensorrt as trt


    inputs: list[TensorSig] = []
    outputs: list[TensorSig] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name).name
        sig = TensorSig(name, TRT_TO_TRITON.get(dtype, f"TYPE_{dtype}"), tuple(_dims(engine.get_tensor_shape(name))[1:]))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(sig)
    return inputs, outputs


def load_engine(plan: Path) -> LoadedPlan:
    """Deserialize a plan file; refuses plans of another TensorRT version with PlanVersionError."""
    require_tensorrt("loading TensorRT engines")
    import tensorrt as trt

    plan = Path(plan)
    if not plan.is_file():
        raise WorkbenchError(f"TensorRT plan {plan} does not exist.", "build it with quantize deploy RUN_DIR")
    meta_file = plan_meta_path(plan)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    check_plan_version(meta, str(trt.__version__), plan)
    logger, log = capturing_logger()
    return _deserialize(plan.read_bytes(), logger, log, bool(meta.get("version_compatible")), plan)


def engine_signature(plan: Path) -> tuple[list[TensorSig], list[TensorSig]]:
    """Inputs/outputs of a plan in Triton terms (batch axis removed), for config cross-checks."""
    return _engine_io(load_engine(plan).engine)


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# runner


class TrtEngine:
    """`engine(feed) -> first output` on the GPU, like OrtEngine; buffers are torch CUDA tensors.

    Device buffers are allocated once per input shape (kept for the last MAX_SHAPES shapes) and bound to the
    execution context when the shape changes; each call copies the feed into them, runs, and copies the
    outputs back. `last_compute_s` is the GPU time of `execute_async_v3` alone (CUDA events around it on the
    engine's stream, then a synchronize): what the benchmark times an engine by, with the copy-inclusive
    wall time of the call kept as its end-to-end line.
    """

    MAX_SHAPES = 64

    def __init__(self, plan: Path | str, name: str = "tensorrt", device: int = 0) -> None:
        import torch

        require_tensorrt("running TensorRT engines")
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise WorkbenchError("running a TensorRT engine needs a CUDA GPU visible to torch.", "run on a machine with an NVIDIA GPU and a CUDA build of torch")
        self.name = name
        self.plan = Path(plan)
        self.device = torch.device("cuda", device)
        with torch.cuda.device(self.device):
            self.loaded = load_engine(self.plan)
            context = self.loaded.engine.create_execution_context()
        if context is None:
            raise EngineBuildError(f"TensorRT could not create an execution context for {self.plan}.", self.loaded.log.lines)
        self.context: trt.IExecutionContext = context
        engine = self.loaded.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.stream = torch.cuda.Stream(device=self.device)
        self.version = str(trt.__version__)
        self._setup_timing()

    def _setup_timing(self) -> None:
        import torch

        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._buffers: OrderedDict[tuple[tuple[str, tuple[int, ...]], ...], tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._bound: tuple[tuple[str, tuple[int, ...]], ...] | None = None
        self.allocations = 0  # buffer sets allocated: one per distinct input shape
        self.last_compute_s: float | None = None

    def _torch_dtype(self, name: str) -> Any:
        import torch

        mapping = {
            "FLOAT": torch.float32,
            "HALF": torch.float16,
            "BF16": torch.bfloat16,
            "INT8": torch.int8,
            "INT32": torch.int32,
            "INT64": torch.int64,
            "BOOL": torch.bool,
            "UINT8": torch.uint8,
        }
        return mapping[self.loaded.engine.get_tensor_dtype(name).name]

    def _set_shapes(self, key: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
        for name, shape in key:
            if not self.context.set_input_shape(name, shape):
                allowed = [tuple(_dims(d)) for d in self.loaded.engine.get_tensor_profile_shape(name, 0)]
                raise WorkbenchError(
                    f"shape {shape} of '{name}' is outside the engine's optimization profile (min, opt, max) {allowed}.",
                    "rebuild with larger deploy.tensorrt max_batch / max_seq",
                )

    def _bind(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The device buffers for this feed's shapes: allocated on the first call with them, bound to the
        context whenever the shapes differ from the previous call's."""
        import torch

        for name in self.input_names:
            if name not in feed:
                raise WorkbenchError(f"the engine needs input '{name}', which the feed lacks.")
        key = tuple((name, tuple(int(x) for x in np.shape(feed[name]))) for name in self.input_names)
        bufs = self._buffers.get(key)
        if bufs is None:
            self._set_shapes(key)
            inputs = {name: torch.empty(shape, dtype=self._torch_dtype(name), device=self.device) for name, shape in key}
            outputs = {
                name: torch.empty(tuple(_dims(self.context.get_tensor_shape(name))), dtype=self._torch_dtype(name), device=self.device)
                for name in self.output_names
            }
            bufs = (inputs, outputs)
            self._buffers[key] = bufs
            self.allocations += 1
            while len(self._buffers) > self.MAX_SHAPES:
                evicted, _ = self._buffers.popitem(last=False)
                if evicted == self._bound:
                    self._bound = None
            self._bound = None
        else:
            self._buffers.move_to_end(key)
        if self._bound != key:
            self._set_shapes(key)
            for name, t in {**bufs[0], **bufs[1]}.items():
                self.context.set_tensor_address(name, t.data_ptr())
            self._bound = key
        return bufs

    def run_all(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs, outputs = self._bind(feed)
            for name, buf in inputs.items():
                buf.copy_(torch.from_numpy(np.ascontiguousarray(feed[name])))
            start, end = self._events
            start.record(self.stream)
            ok = self.context.execute_async_v3(self.stream.cuda_stream)
            end.record(self.stream)
            if not ok:
                raise EngineBuildError(f"TensorRT inference failed for {self.plan.name}.", self.loaded.log.errors())
            self.stream.synchronize()
            self.last_compute_s = float(start.elapsed_time(end)) / 1000.0
            return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in outputs.items()}

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.run_all(feed)[self.output_names[0]]

    def describe(self) -> dict[str, Any]:
        meta_file = plan_meta_path(self.plan)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        out: dict[str, Any] = {"backend": "tensorrt", "tensorrt_version": self.version, "gpu": _gpu_name(), "plan": self.plan.name, "build": meta.get("settings", {})}
        summary = build_summary(self.plan)
        if summary is not None:
            out["build_seconds"] = summary.pop("seconds")
            summary.pop("version")
            out["tensorrt_layers"] = summary
        return out

    def __enter__(self) -> TrtEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.context


# ---------------------------------------------------------------------------------------------
# engine.runtime: tensorrt


def _open(onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None, inference_precision: str | None = None) -> Engine:
    # engines/ beside models/: plans are per-GPU artifacts of the run, rebuilt when their key changes
    plan = Path(onnx_path).parent.parent / "engines" / f"{name}.plan"
    plan_from_onnx(Path(onnx_path), plan, settings_for_runtime(recipe, engine_precision(precision)))
    return TrtEngine(plan, name)


def _preflight(recipe: Recipe) -> None:
    require_tensorrt("engine.runtime: tensorrt")
    if gpu_capability() is None:
        raise WorkbenchError(
            "engine.runtime: tensorrt needs an NVIDIA GPU visible to torch (torch.cuda.is_available() is False here).",
            "run on a GPU machine with a CUDA build of torch, or set engine.runtime: onnxruntime",
        )
    settings_for_runtime(recipe, "float32")  # profile shapes are checked now, not at the first build
    if any(SCHEMES.get(name).precision == "fp8" for name in recipe.quantization.schemes):
        require_fp8_gpu()


def _float_precision(recipe: Recipe) -> str:
    # the float baseline's engine is built with FP16 kernels allowed (engine.tensorrt.fp16): label it so
    return "fp16" if recipe.engine.tensorrt.fp16 else "float32"


BACKENDS.register("tensorrt", EngineBackend(open=_open, preflight=_preflight, float_precision=_float_precision))
