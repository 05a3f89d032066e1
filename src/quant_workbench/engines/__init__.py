"""Inference engines: each runs an ONNX artifact on a backend and returns numpy outputs.

`EngineFromOnnx(path, recipe, name, precision)` is what the evaluate, benchmark and search stages
call: ONNX Runtime with the recipe's provider, or (engine.runtime: tensorrt) a TensorRT engine built
from the same ONNX file, cached beside the run's models, and run on the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Engine

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["Engine", "EngineFromOnnx", "preflight_runtime"]


def EngineFromOnnx(onnx_path: Path, recipe: Recipe, name: str, precision: str, *, threads: int | None = None) -> Engine:  # noqa: N802
    if recipe.engine.runtime == "tensorrt":
        from .tensorrt import TrtEngine, engine_precision, plan_from_onnx, settings_for_runtime

        # engines/ beside models/: plans are per-GPU artifacts of the run, rebuilt when their key changes
        plan = Path(onnx_path).parent.parent / "engines" / f"{name}.plan"
        plan_from_onnx(Path(onnx_path), plan, settings_for_runtime(recipe, engine_precision(precision)))
        return TrtEngine(plan, name)
    from .onnxruntime import OrtEngine

    return OrtEngine(onnx_path, recipe.engine, name, threads=threads)


def preflight_runtime(recipe: Recipe) -> None:
    """Fail before any work when the recipe's runtime cannot run here (a missing extra, no GPU)."""
    if recipe.engine.runtime != "tensorrt":
        return
    from ..errors import WorkbenchError
    from .tensorrt import gpu_capability, require_fp8_gpu, require_tensorrt, settings_for_runtime

    require_tensorrt("engine.runtime: tensorrt")
    if gpu_capability() is None:
        raise WorkbenchError(
            "engine.runtime: tensorrt needs an NVIDIA GPU visible to torch (torch.cuda.is_available() is False here).",
            "run on a GPU machine with a CUDA build of torch, or set engine.runtime: onnxruntime",
        )
    settings_for_runtime(recipe, "float32")  # profile shapes are checked now, not at the first build
    if "fp8" in recipe.quantization.families:
        require_fp8_gpu()
