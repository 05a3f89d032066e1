"""Inference engines: each runs an ONNX artifact on a backend and returns numpy outputs.

`EngineFromOnnx(path, recipe, name, precision)` is what the evaluate, benchmark and search stages
call: the `engine.runtime` the recipe names, looked up in the ENGINES registry. Each runtime is one
module of this package that declares itself there (onnxruntime.py: ONNX Runtime with the recipe's
provider; tensorrt.py: a TensorRT engine built from the same ONNX file, cached beside the run's
models, and run on the GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..extension_points import ENGINES
from .base import Engine

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["Engine", "EngineFromOnnx", "float_precision", "preflight_runtime"]


def EngineFromOnnx(onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None) -> Engine:  # noqa: N802
    return ENGINES.get(recipe.engine.runtime).open(onnx_path, recipe, name, precision, threads=threads)


def preflight_runtime(recipe: Recipe) -> None:
    """Fail before any work when the recipe's runtime cannot run here (a missing extra, no GPU)."""
    ENGINES.get(recipe.engine.runtime).preflight(recipe)


def float_precision(recipe: Recipe) -> str:
    """The precision the float baseline computes in on the recipe's engine (float32, or fp16 for a TensorRT FP16 engine)."""
    return ENGINES.get(recipe.engine.runtime).float_precision(recipe)
