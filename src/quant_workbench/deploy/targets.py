"""What a deploy target declares: the builder of one variant's Triton model folder (DeployBackend), what it
is given (TargetInputs) and hands back (TargetModel). One backend per deploy-target name of the catalog
(config/catalog.py DEPLOY_TARGETS), registered in TARGETS by deploy/triton.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from quant_workbench.core.registry import Registry
from quant_workbench.core.signatures import TensorSig

if TYPE_CHECKING:
    from quant_workbench.config.recipe import DeploySpec, Recipe


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


# deploy target name (config/catalog.py DEPLOY_TARGETS) -> its builder; filled by deploy/triton.py
TARGETS: Registry[DeployBackend] = Registry("deploy target")
