"""Inference engines: each runs an ONNX artifact on a backend and returns numpy outputs.

`EngineFromOnnx(path, recipe, name, precision)` is what the evaluate, benchmark and search stages
call: the `engine.runtime` the recipe names (or the row's own `runtime` in a run over several
engines), looked up in the BACKENDS registry (runtime/base.py). Each runtime is one module of this package that
registers itself there under its name in the catalog (config/catalog.py ENGINES) (onnxruntime.py: ONNX Runtime with the recipe's provider; tensorrt.py: a TensorRT engine
built from the same ONNX file, cached beside the run's models, and run on the GPU; openvino.py:
OpenVINO's CPU plugin reading the ONNX file directly).

A run over several engines (`engine.runtimes`) has one row per (variant, engine, inference
precision): `row_name` names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# each runtime module registers its backend in BACKENDS when imported: every engine of the catalog
from quant_workbench.runtime import onnxruntime, openvino, tensorrt  # noqa: F401
from quant_workbench.runtime.base import BACKENDS, Engine

if TYPE_CHECKING:
    from quant_workbench.config.recipe import Recipe

__all__ = ["Engine", "EngineFromOnnx", "engine_summary", "float_precision", "preflight_runtime", "row_name", "row_precisions"]


def EngineFromOnnx(  # noqa: N802
    onnx_path: Path,
    recipe: Recipe,
    name: str,
    precision: str,
    *,
    threads: int | None = None,
    runtime: str | None = None,
    inference_precision: str | None = None,
) -> Engine:
    """An engine over the artifact: `runtime` (default: the recipe's reference engine) with the row's
    `inference_precision` (f32 | bf16; None = the engine's default)."""
    backend = BACKENDS.get(runtime or recipe.engine.runtime)
    # passed only when set: an engine without a choice of precision may leave the keyword out of its `open`
    extra = {} if inference_precision is None else {"inference_precision": inference_precision}
    return backend.open(onnx_path, recipe, name, precision, threads=threads, **extra)


def preflight_runtime(recipe: Recipe) -> None:
    """Fail before any work when one of the recipe's runtimes cannot run here (a missing extra, no GPU)."""
    for runtime in recipe.engine.all_runtimes:
        BACKENDS.get(runtime).preflight(recipe)


def float_precision(recipe: Recipe) -> str:
    """The precision the float baseline computes in on the recipe's engine (float32, or fp16 for a TensorRT FP16 engine)."""
    return BACKENDS.get(recipe.engine.runtime).float_precision(recipe)


def engine_summary(path: Path, recipe: Recipe, runtime: str | None = None, inference_precision: str | None = None) -> dict[str, Any]:
    """What the engine runs from the artifact (the row's `engine` field); {} for an engine without a summary."""
    summary = BACKENDS.get(runtime or recipe.engine.runtime).summary
    return {} if summary is None else summary(path, recipe, inference_precision=inference_precision)


def row_precisions(recipe: Recipe, runtime: str, quantized: bool = False) -> list[str | None]:
    """The inference precisions `runtime` gets one row each for on this machine (None: its one default), for
    the float model or, with `quantized`, for a quantized variant's float leftovers."""
    backend = BACKENDS.get(runtime)
    if quantized and backend.quantized_precisions is not None:
        return backend.quantized_precisions(recipe)
    return backend.precisions(recipe)


def row_name(variant: str, recipe: Recipe, runtime: str, inference_precision: str | None = None, quantized: bool = False) -> str:
    """`int8-max` on the reference engine, `int8-max@openvino` on another; `-bf16` for rows whose float
    parts run in bf16 (`float-bf16@openvino`).

    The reference engine's first precision keeps today's names (even if it is not f32), so single-engine
    recipes and every caller that looks up `float` are unchanged."""
    primary = runtime == recipe.engine.runtime
    plain = inference_precision in (None, "f32") or (primary and inference_precision == row_precisions(recipe, runtime, quantized)[0])
    name = variant if plain else f"{variant}-{inference_precision}"
    return name if primary else f"{name}@{runtime}"
