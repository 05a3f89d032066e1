"""The workbench's extension points: one registry each, and what an entry of each declares.

Neutral ground (imports only registry.py and core/signatures.py at run time), so the recipe schema can read
the registries' names while the modules that declare the entries import the recipe. Each registry
imports its declaring modules the first time it is read. docs/ARCHITECTURE.md ("Extension points")
says which file a new entry goes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from quant_workbench.core.registry import Registry
from quant_workbench.core.signatures import TensorSig

if TYPE_CHECKING:
    from quant_workbench.config.recipe import DeploySpec, Recipe
    from quant_workbench.export.graphs import EngineGraphs, ReferenceInputs
    from quant_workbench.quantize.observers import HistogramCalibrator
    from quant_workbench.runtime.base import Engine


# ---------------------------------------------------------------------------------------------
# calibration methods (quantization.calibration.methods): declared in quantize/observers.py


class AmaxMethod(Protocol):
    """Clipping range of one quantizer from its collected statistics."""

    def __call__(self, calib: HistogramCalibrator, *, percentile: float, num_bits: int, unsigned: bool, fp8: bool) -> float: ...


CALIBRATORS: Registry[AmaxMethod] = Registry("calibration method", ["quant_workbench.quantize.observers"])


# ---------------------------------------------------------------------------------------------
# variant families (quantization.compare): declared in quantize/formats.py and export/graphs.py


@dataclass(frozen=True)
class VariantFamily:
    """What a family of variants is and what it needs; the recipe validates against these facts."""

    precision: Literal["int8", "fp8"]
    # False: no calibration and no Q/DQ export per method; the run builds its one variant itself
    calibrated: bool = True
    # SmoothQuant-rewritten model, one family per quantization.smoothquant alpha
    smoothquant: bool = False
    min_opset: int | None = None
    min_opset_why: str = ""
    # calibration method -> why it is not defined for this family
    rejects_methods: Mapping[str, str] = field(default_factory=dict)
    # set when the family runs on ONNX Runtime's CPU kernels only: why
    ort_cpu_only: str = ""


FAMILIES: Registry[VariantFamily] = Registry("variant family", ["quant_workbench.quantize.formats", "quant_workbench.export.graphs"])


# ---------------------------------------------------------------------------------------------
# engines (engine.runtime): declared in runtime/<runtime>.py


class OpenEngine(Protocol):
    # `inference_precision` is passed only to engines that have a choice (EngineBackend.precisions)
    def __call__(self, onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None) -> Engine: ...


class SummarizeEngine(Protocol):
    def __call__(self, onnx_path: Path, recipe: Recipe, *, inference_precision: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EngineBackend:
    """`open` runs an ONNX artifact (building whatever the runtime needs from it); `preflight` fails
    before any work when the runtime cannot run here (a missing extra, no GPU); `float_precision` names
    the precision the float baseline computes in on this engine (a TensorRT FP16 build: "fp16").
    `inference_precision` (f32 | bf16, None = the engine's default) is what a row computes its float parts
    in, for an engine that has the choice (`precisions(recipe)` lists the ones this machine runs). `summary`,
    when set, describes what the engine actually runs from the artifact (kernels, precisions, fusions): the
    row's `engine` field and the report's "Engine graphs" section."""

    open: OpenEngine
    preflight: Callable[[Recipe], None] = lambda recipe: None
    float_precision: Callable[[Recipe], str] = lambda recipe: "float32"
    summary: SummarizeEngine | None = None
    precisions: Callable[[Recipe], list[str | None]] = lambda recipe: [None]
    label: str = ""  # what reports call the engine; default: its runtime name


ENGINES: Registry[EngineBackend] = Registry("engine runtime", ["quant_workbench.runtime"])


# ---------------------------------------------------------------------------------------------
# deploy targets (deploy.targets): declared in deploy/<module>.py (the Triton backends in deploy/triton.py)


@dataclass(frozen=True)
class TargetModel:
    """What a target's builder hands back for one variant: the model folder's config and contents."""

    config: str  # config.pbtxt text
    kind: str  # Triton platform or backend
    files: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class TargetInputs:
    """One variant's model folder to fill: `folder/1/` exists; `engines` holds what `build_engine` made."""

    name: str
    variant: str
    folder: Path
    inputs: list[TensorSig]
    outputs: list[TensorSig]
    recipe: Recipe
    spec: DeploySpec
    onnx: Path  # the variant's Q/DQ (or float) ONNX
    cpu_onnx: Path  # what ONNX Runtime CPU ran in the run (the fused engine graph when there is one)
    precision: str
    engine: Path | None = None
    engine_note: str = ""
    # the row's engine and inference precision in the run (issue 17: rows of several engines); a target for
    # another engine than the row's runs `onnx`, the portable export
    runtime: str | None = None
    inference_precision: str | None = None


class BuildEngine(Protocol):
    def __call__(self, recipe: Recipe, spec: DeploySpec, onnx_path: Path, engines_dir: Path, name: str, precision: str | None) -> Path: ...


@dataclass(frozen=True)
class DeployBackend:
    """`build` writes one variant's model; `suffix` names it (<variant>-<suffix>). `build_engine`, when
    set, compiles each variant before the repository is written (skipped by `--no-engines`), and
    `preflight` fails fast, before a long run, when an optional package that build needs is missing."""

    suffix: str
    build: Callable[[TargetInputs], TargetModel]
    cpu_servable: bool = False  # loads on a CPU-only tritonserver
    build_engine: BuildEngine | None = None
    preflight: Callable[[], None] | None = None
    engine_label: str = ""  # what the built engines are called in progress lines


DEPLOY_TARGETS: Registry[DeployBackend] = Registry("deploy target", ["quant_workbench.deploy"])


# ---------------------------------------------------------------------------------------------
# reference rows (references): declared in export/graphs.py


@dataclass(frozen=True)
class ReferenceRow:
    """A standard tool's graph scored and timed beside the variants. `build(graphs, inputs, path)`
    writes the ONNX file the row runs (engine_graphs.EngineGraphs.references calls it)."""

    precision: Literal["float32", "int8"]
    calibration_method: str | None
    build: Callable[[EngineGraphs, ReferenceInputs, Path], None]
    # the engine that runs the row (a run lists the rows of the engines it runs); `file` is the artifact's
    # name in models/ ({kind} is the reference's name), for engines that read more than ONNX
    runtime: str = "onnxruntime"
    file: str = "ref-{kind}.onnx"
    inference_precision: str | None = None  # None: the engine's default (what a user who sets nothing gets)


REFERENCES: Registry[ReferenceRow] = Registry("reference", ["quant_workbench.export.graphs", "quant_workbench.export.openvino"])
