"""The engine protocol every runtime implements, and what a runtime declares: one EngineBackend per engine
name of the catalog (config/catalog.py ENGINES), registered in BACKENDS by runtime/<engine>.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from quant_workbench.core.registry import Registry

if TYPE_CHECKING:
    from quant_workbench.config.recipe import Recipe


class Engine(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


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
    # the precisions of a quantized variant's float leftovers (None: the same as `precisions`)
    quantized_precisions: Callable[[Recipe], list[str | None]] | None = None


# engine name (config/catalog.py ENGINES) -> its backend; filled by the runtime modules runtime/__init__.py imports
BACKENDS: Registry[EngineBackend] = Registry("engine runtime")
