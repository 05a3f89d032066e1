"""Variant families of one run: INT8, INT8 + SmoothQuant (one per alpha) and FP8 E4M3.

`quantization.compare` (or `format` + `smoothquant`) names the families; every family gets one
variant per calibration method, all in the same report. :func:`family_variants` drives pipeline/run.py's
variant loop: it puts the prepared model into each family's state (quantizer format, SmoothQuant
rewrite and its re-calibrated statistics) while that family's variants are built, undoes it
afterwards, and leaves the model in INT8 format for later stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from quant_workbench.config.catalog import FAMILIES
from quant_workbench.config.recipe import CalibMethod, QuantFamily, QuantSpec
from quant_workbench.config.vocabulary import Format, format_prefix
from quant_workbench.core.artifacts import hash_json
from quant_workbench.quantize.apply import set_format
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.smoothquant import SmoothState, checked_smoothquant

Recalibrate = Callable[[dict[str, Any]], tuple[dict[str, HistogramCalibrator], dict[str, Any]]]


@dataclass
class Family:
    name: QuantFamily
    kind: Format
    alpha: float | None = None
    ffn_out: bool = False  # SmoothQuant also on FFN-out's input (smoothquant.ffn_out)
    calibrators: dict[str, HistogramCalibrator] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)  # merged into each variant's fidelity
    key: dict[str, Any] = field(default_factory=dict)  # joins each variant's ONNX cache key
    error: str | None = None  # set when the family could not be prepared: its variants fail with it

    @property
    def prefix(self) -> str:
        """Variant names are `<prefix>-<method>`: int8-mse, int8-sq0.5-mse, fp8-mse (a format's own name, or
        for SmoothQuant its precision and alpha)."""
        return format_prefix(self.kind if self.alpha is not None else self.name, self.alpha)

    @property
    def precision(self) -> Literal["int8", "fp8"]:
        return self.kind


def expand_families(spec: QuantSpec) -> list[Family]:
    out: list[Family] = []
    for name in spec.families:
        declared = FAMILIES.get(name)
        if not declared.calibrated:  # pipeline/run.py builds it (int8-dynamic: from the fused float graph)
            continue
        if declared.smoothquant:
            assert spec.smoothquant is not None  # the recipe validator guarantees it
            out += [Family(name, declared.precision, alpha=a, ffn_out=spec.smoothquant.ffn_out) for a in spec.smoothquant.alphas]
        else:
            out.append(Family(name, declared.precision))
    return out


def _prepare_smoothquant(
    fam: Family,
    model: nn.Module,
    example: dict[str, torch.Tensor],
    base: dict[str, HistogramCalibrator],
    channel_amax: dict[str, torch.Tensor],
    recalibrate: Recalibrate,
    tolerance: float,
) -> SmoothState:
    assert fam.alpha is not None
    state, check = checked_smoothquant(model, example, channel_amax, fam.alpha, tolerance, ffn_out=fam.ffn_out)
    diff = check["float_max_abs_diff"]
    try:
        if not check["passed"]:
            fam.fidelity["smoothquant"] = {**state.summary(), "float_equivalence": check}
            fam.error = (
                f"SmoothQuant (alpha {fam.alpha:g}) changed the float model's outputs by {diff:.3g} > {tolerance:g}; "
                "its variants are skipped"
            )
            return state
        groups = [g.describe() for g in state.groups]
        factors = {n: s.tolist() for n, s in sorted(state.factors.items())}
        calibrators, info = recalibrate({"smoothquant": {"alpha": fam.alpha, "groups": groups}})
        fam.calibrators = calibrators
        ratios: list[float] = []
        amax_before: list[float] = []
        amax_after: list[float] = []
        for g in state.groups:
            for lin in g.linears:
                qname = f"{lin}.input_quantizer"
                if qname in base and qname in calibrators and calibrators[qname].amax_max > 0:
                    amax_before.append(base[qname].amax_max)
                    amax_after.append(calibrators[qname].amax_max)
                    ratios.append(amax_before[-1] / amax_after[-1])
        fam.fidelity["smoothquant"] = {
            **state.summary(),
            "float_equivalence": check,
            "input_range": {
                "max_amax_before": max(amax_before, default=0.0),
                "max_amax_after": max(amax_after, default=0.0),
                "median_reduction": float(np.median(ratios)) if ratios else None,
                "reduced_inputs": sum(r > 1.0 for r in ratios),
                "inputs": len(ratios),
            },
            "calibration_cache": info.get("cache_file"),
            "calibration_cache_hit": info.get("cache_hit"),
        }
        fam.key = {"smoothquant": {"alpha": fam.alpha, "factors": hash_json(factors)}}
        return state
    except BaseException:
        state.restore()
        raise


def family_variants(
    spec: QuantSpec,
    model: nn.Module,
    example: dict[str, torch.Tensor],
    base_calibrators: dict[str, HistogramCalibrator],
    channel_amax: dict[str, torch.Tensor],
    recalibrate: Recalibrate,
    *,
    float_tolerance: float,
    say: Callable[[str], None] = print,
) -> Iterator[tuple[Family, CalibMethod]]:
    """Yield (family, method) pairs with the model in that family's state while they are consumed."""
    methods: list[CalibMethod] = list(spec.calibration.methods)
    try:
        for fam in expand_families(spec):
            state: SmoothState | None = None
            try:
                set_format(model, fam.kind)
                if fam.kind != "int8":
                    fam.key = {"format": fam.kind}
                if fam.alpha is None:
                    fam.calibrators = base_calibrators
                else:
                    say(f"[smoothquant alpha {fam.alpha:g}]")
                    state = _prepare_smoothquant(fam, model, example, base_calibrators, channel_amax, recalibrate, float_tolerance)
            except Exception as exc:  # the family's variants are recorded as failed; the run goes on
                fam.error = f"{fam.prefix} could not be prepared: {type(exc).__name__}: {exc}"
            try:
                for method in methods:
                    yield fam, method
            finally:
                if state is not None:
                    state.restore()
    finally:
        set_format(model, "int8")
