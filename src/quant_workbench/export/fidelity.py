"""The Q/DQ export's check against the fake-quant model it came from: per layer and end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.comparator import Comparator, mean_cosine, numpy_feed, torch_runner
from quant_workbench.core.errors import ExportError
from quant_workbench.export.qdq import end_to_end_allowance, per_layer_fidelity, qdq_summary
from quant_workbench.models.loading import LoadedModel
from quant_workbench.quantize.smoothquant import float_mode
from quant_workbench.runtime.onnxruntime import OrtEngine


def qdq_fidelity(recipe: Recipe, loaded: LoadedModel, path: Path, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run the Q/DQ ONNX `path` in ONNX Runtime against `loaded.model` in fake quant; raise if they disagree."""
    summary = qdq_summary(path)
    layers = per_layer_fidelity(path, loaded.model, example, lambda b: OrtEngine(b, recipe.engine, "layer"))
    model = torch_runner(loaded.model)
    fake = Comparator(model, numpy_feed(example))
    with float_mode(loaded.model):
        noise = fake.measure(model).distance
    # Two correct implementations of one quantized model drift apart end to end in proportion to its
    # own quantization noise (a value on a rounding boundary lands one step apart, and that propagates
    # through later layers; ONNX Runtime's fused integer kernels round differently from fake quant).
    # The per-layer check (cosine >= LAYER_MIN_COSINE per Linear) is what catches export bugs; end to end,
    # the ONNX model may differ from fake quant by up to half the fake-quant model's distance from float.
    with OrtEngine(path, recipe.engine, path.stem) as eng:
        end_to_end = fake.check(eng, mean_cosine(end_to_end_allowance(noise, recipe.export.min_cosine)))
    worst = min(layers, key=lambda m: layers[m].mean_cosine) if layers else None
    out = {
        "graph": summary,
        "per_layer": {
            "layers": len(layers),
            "min_cosine": layers[worst].mean_cosine if worst is not None else None,
            "worst_layer": worst,
            "max_abs_diff": max((x.max_abs_diff for x in layers.values()), default=0.0),
            "passed": all(x.passed for x in layers.values()),
        },
        "end_to_end": {
            "mean_cosine": end_to_end.mean_cosine, "min_cosine": end_to_end.min_cosine, "threshold": end_to_end.threshold,
            "fake_quant_vs_float_cosine": 1.0 - noise, "passed": end_to_end.passed, "samples": end_to_end.samples,
        },
    }
    if not out["per_layer"]["passed"] or not end_to_end.passed:
        raise ExportError(
            f"Q/DQ ONNX {path.name} disagrees with the fake-quant model "
            f"(worst layer {out['per_layer']['worst_layer']} cosine {out['per_layer']['min_cosine']:.5f}, end-to-end mean cosine {end_to_end.mean_cosine:.4f}, "
            f"allowed >= {end_to_end.threshold:.4f}).",
            "this is an export bug; run with --debug and report it",
        )
    return out
