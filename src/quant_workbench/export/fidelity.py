"""The Q/DQ export's check against the fake-quant model it came from: per layer and end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quant_workbench.config.recipe import Recipe
from quant_workbench.core.errors import ExportError
from quant_workbench.export.qdq import end_to_end_allowance, per_layer_fidelity, qdq_summary
from quant_workbench.measure.stats import cosine_rows
from quant_workbench.models.loading import LoadedModel
from quant_workbench.quantize.smoothquant import float_mode
from quant_workbench.runtime.onnxruntime import OrtEngine


def qdq_fidelity(recipe: Recipe, loaded: LoadedModel, path: Path, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run the Q/DQ ONNX `path` in ONNX Runtime against `loaded.model` in fake quant; raise if they disagree."""
    summary = qdq_summary(path)
    layers = per_layer_fidelity(path, loaded.model, example, lambda b: OrtEngine(b, recipe.engine, "layer"))
    with torch.no_grad():
        fake = loaded.model(**example).numpy()
        with float_mode(loaded.model):
            reference = loaded.model(**example).numpy()
    with OrtEngine(path, recipe.engine, path.stem) as eng:
        got = eng({k: v.numpy() for k, v in example.items()})
    cos = cosine_rows(got, fake)
    # Two correct implementations of one quantized model drift apart end to end in proportion to its
    # own quantization noise (a value on a rounding boundary lands one step apart, and that propagates
    # through later layers; ONNX Runtime's fused integer kernels round differently from fake quant).
    # The per-layer check (cosine >= 0.9999 per Linear) is what catches export bugs; end to end, the
    # ONNX model may differ from fake quant by up to half the fake-quant model's distance from float.
    noise = float(1.0 - cosine_rows(fake, reference).mean())
    allowed = end_to_end_allowance(noise, recipe.export.min_cosine)
    worst = min(layers, key=lambda x: x.cosine) if layers else None
    out = {
        "graph": summary,
        "per_layer": {
            "layers": len(layers),
            "min_cosine": worst.cosine if worst else None,
            "worst_layer": worst.module if worst else None,
            "max_abs_diff": max((x.max_abs_diff for x in layers), default=0.0),
            "passed": all(x.ok() for x in layers),
        },
        "end_to_end": {
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "threshold": 1.0 - allowed,
            "fake_quant_vs_float_cosine": 1.0 - noise, "passed": bool(1.0 - cos.mean() <= allowed), "samples": len(cos),
        },
    }
    if not out["per_layer"]["passed"] or not out["end_to_end"]["passed"]:
        raise ExportError(
            f"Q/DQ ONNX {path.name} disagrees with the fake-quant model "
            f"(worst layer {out['per_layer']['worst_layer']} cosine {out['per_layer']['min_cosine']:.5f}, end-to-end mean cosine {cos.mean():.4f}, "
            f"allowed >= {1.0 - allowed:.4f}).",
            "this is an export bug; run with --debug and report it",
        )
    return out
