"""The one verb: prepare the model per the plan, calibrate once, then set scales for a method.

    model = prepare(model, plan)                      # swap in quantized modules, quantizers enabled per plan
    calibrators = calibrate(model, forward_loop)      # one pass: max + histogram for every activation quantizer
    set_scales(model, calibrators, method="entropy")  # any method, from the same statistics
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from quant_workbench.config.recipe import CalibMethod
from quant_workbench.config.vocabulary import Format
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.quantize.architectures import architecture_of
from quant_workbench.quantize.modules import QuantAdd, QuantLinear, QuantMatMul
from quant_workbench.quantize.observers import CalibrationError, HistogramCalibrator, per_channel_amax
from quant_workbench.quantize.plan import QuantPlan
from quant_workbench.quantize.quantizer import QuantFormat, TensorQuantizer

log = logging.getLogger(__name__)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def prepare(model: nn.Module, plan: QuantPlan, *, per_channel_weights: bool = True, kind: Format = "int8") -> nn.Module:
    """Swap in quantized modules for every candidate point (disabled ones pass through).

    Every candidate gets modules, enabled or not, so that the calibration pass can collect
    statistics for all of them and later selections reuse the cached statistics.
    """
    weight_fmt = QuantFormat("int8", axis=0 if per_channel_weights else None)
    arch = architecture_of(model)
    attention_done: set[str] = set()
    for point in plan.points:
        if point.kind == "linear":
            parent_name, _, child = point.module.rpartition(".")
            parent = _get(model, parent_name) if parent_name else model
            lin = getattr(parent, child)
            if not isinstance(lin, QuantLinear):
                lin = QuantLinear(lin, weight_fmt)
                setattr(parent, child, lin)
            modules: list[nn.Module] = [lin]
        elif point.kind == "attention_matmul":
            attn_name = point.module.rsplit(".", 1)[0]
            if attn_name not in attention_done:
                arch.attach_attention_matmuls(_get(model, attn_name))
                attention_done.add(attn_name)
            modules = [_get(model, point.module)]
        else:
            block_name, _, attr = point.module.rpartition(".")
            block = _get(model, block_name)
            if not isinstance(getattr(block, attr, None), QuantAdd):
                arch.attach_residual_adds(block, arch.residual_attrs(block_name, model))
            modules = [_get(model, point.module)]
        for m in modules:
            # Direct children only: a Linear's call sites are points of their own.
            for q in m.children():
                if isinstance(q, TensorQuantizer):
                    q.enabled = point.enabled
    if kind != "int8":
        set_format(model, kind)
    return model


def set_format(model: nn.Module, kind: Format) -> None:
    """Switch every quantizer of a prepared model to int8 or fp8 (granularity kept); call
    set_scales afterwards. Calibration statistics are format independent, so one pass serves both."""
    for q in quantizers(model).values():
        if q.fmt.kind != kind:
            q.set_format(QuantFormat(kind, axis=q.fmt.axis))


def quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def activation_quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    return {n: q for n, q in quantizers(model).items() if not n.endswith(".weight_quantizer")}


@contextmanager
def calibration_mode(model: nn.Module, calibrators: dict[str, HistogramCalibrator]) -> Iterator[None]:
    everything = quantizers(model)
    acts = activation_quantizers(model)
    saved = {n: q.enabled for n, q in everything.items()}
    try:
        for q in everything.values():
            # Weights pass through in float: statistics describe the float model's activations.
            q.enabled = False
        for n, q in acts.items():
            # Collect for every candidate, enabled or not: the statistics are a property of the float
            # model and the data, so one pass serves every layer selection.
            q.enabled = True
            q.calibrating = True
            q.calibrator = calibrators[n]
        yield
    finally:
        for n, q in everything.items():
            q.enabled = saved[n]
            q.calibrating = False
            q.calibrator = None


def calibrate(
    model: nn.Module, forward_loop: Callable[[nn.Module], None], *, num_bins: int = 2048
) -> dict[str, HistogramCalibrator]:
    calibrators = {n: HistogramCalibrator(n, num_bins=num_bins) for n in activation_quantizers(model)}
    with calibration_mode(model, calibrators), torch.no_grad():
        try:
            forward_loop(model)
        except CalibrationError as exc:
            # the calibrator's own message and hint, once (str(exc) would repeat its "Hint:")
            raise WorkbenchError(exc.message, exc.hint or "check the input data and the float model (it may overflow)") from exc
    return calibrators


def set_scales(
    model: nn.Module,
    calibrators: dict[str, HistogramCalibrator],
    method: CalibMethod,
    *,
    percentile: float = 99.99,
) -> dict[str, float]:
    """Set every enabled quantizer's amax; returns the activation amax per quantizer."""
    chosen: dict[str, float] = {}
    for name, q in quantizers(model).items():
        if name.endswith(".weight_quantizer"):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            weight = parent.get_parameter("weight").detach()
            axis = q.fmt.axis
            q.set_amax(per_channel_amax(weight, axis) if axis is not None else weight.abs().max())
            continue
        if not q.enabled:
            continue
        cal = calibrators.get(name)
        if cal is None:
            raise WorkbenchError(
                f"no calibration statistics for quantizer {name}.",
                "the calibration cache does not match the model; delete it or change calibration.cache_dir",
            )
        try:
            amax = cal.compute_amax(method, percentile=percentile, fp8=q.fmt.kind == "fp8")
        except CalibrationError as exc:
            raise WorkbenchError(exc.message, exc.hint or "keep this op in float with quantization.ignore") from exc
        q.set_amax(amax)
        chosen[name] = float(amax)
    return chosen


def set_export_mode(model: nn.Module, on: bool) -> None:
    missing = [n for n, q in quantizers(model).items() if on and q.enabled and not q.is_calibrated]
    if missing:
        raise WorkbenchError(f"cannot export: quantizers without scales: {', '.join(missing[:5])}", "calibrate before export")
    for name, q in quantizers(model).items():
        q.export_mode = on
        q.export_name = name if on else ""


def strip_quantization(model: nn.Module) -> nn.Module:
    """Turn every quantizer off (the model computes in float again)."""
    for q in quantizers(model).values():
        q.enabled = False
    return model


def apply_flags(model: nn.Module, plan: QuantPlan) -> None:
    """Toggle the quantizers of an already prepared model to the plan's enabled flags (no re-swap)."""
    for point in plan.points:
        module = model.get_submodule(point.module)
        # Direct children only: a Linear's call sites are points of their own.
        for q in module.children():
            if isinstance(q, TensorQuantizer):
                q.enabled = point.enabled


__all__ = [
    "QuantLinear",
    "QuantMatMul",
    "activation_quantizers",
    "apply_flags",
    "calibrate",
    "prepare",
    "quantizers",
    "set_export_mode",
    "set_format",
    "set_scales",
    "strip_quantization",
]
