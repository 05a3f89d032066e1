"""TensorQuantizer: one quantization point (a tensor entering a quantized op).

Three modes, switched by the caller:
- calibrating: pass the tensor through unchanged and feed it to the calibrator;
- fake-quant (default once `amax` is set): quantize-dequantize with straight-through gradients
  (division-exact INT8 / FP8 quantize-dequantize, like ONNX QuantizeLinear), so the same module serves PTQ evaluation and QAT;
- export: emit the `qwb::qdq` custom op, which the ONNX exporter lowers to a
  QuantizeLinear/DequantizeLinear pair whose scale and zero point are named initializers
  (`<quantizer name>._scale`, `<quantizer name>._zero_point`) and whose nodes are named after the
  quantizer (`export_name`, set by `apply.set_export_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quant_workbench.config.vocabulary import Format
from quant_workbench.quantize.observers import HistogramCalibrator

INT8_MAX = 127.0
# Largest finite float8 E4M3 (e4m3fn: no infinities, one NaN pattern) value: scale = amax / 448.
FP8_E4M3_MAX = 448.0



@dataclass(frozen=True)
class QuantFormat:
    """Per-tensor quantization arguments (one level of the spec: bits, kind, granularity).

    int8: symmetric, zero point 0 (int8), scale = amax / 127.
    fp8: float8 E4M3 (torch.float8_e4m3fn / ONNX FLOAT8E4M3FN), zero point 0 of that dtype,
    scale = amax / 448, saturating at +-448 (ONNX QuantizeLinear's saturate=1 default).
    """

    kind: Format = "int8"
    axis: int | None = None  # None = per-tensor; otherwise the channel axis kept by per-channel scales

    @property
    def qmin(self) -> int:
        return -128

    @property
    def qmax(self) -> int:
        return 127

    @property
    def max_representable(self) -> float:
        return FP8_E4M3_MAX if self.kind == "fp8" else INT8_MAX

    @property
    def zero_point_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self.kind == "fp8" else torch.int8

    def describe(self) -> str:
        gran = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{self.kind} {gran}"


# ---------------------------------------------------------------------------------------------
# FP8 E4M3 fake quantization: (x / scale) saturated to +-448, rounded by the float8_e4m3fn cast
# (round to nearest even, subnormals kept), times scale. Division (not a reciprocal multiply) so the
# result matches ONNX QuantizeLinear bit for bit.


def _broadcast_scale(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or scale.dim() == 0:
        return scale
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return scale.reshape(shape)


def fp8_e4m3_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize through float8 E4M3 (no gradient handling; see Fp8FakeQuant)."""
    s = _broadcast_scale(scale.to(x.dtype), x, axis)
    q = (x / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q.to(x.dtype) * s


class Fp8FakeQuant(torch.autograd.Function):
    """fp8_e4m3_qdq with a straight-through gradient inside the representable range (zero outside,
    like torch's fake_quantize ops), so QAT can reuse FP8 quantizers."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
        s = _broadcast_scale(scale.to(x.dtype), x, axis)
        ctx.save_for_backward((x / s).abs() <= FP8_E4M3_MAX)
        return fp8_e4m3_qdq(x, scale, axis)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (inside,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grads[0] * inside, None, None


def int8_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int | None, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """Symmetric INT8 quantize-dequantize that rounds x / scale half-to-even, exactly as ONNX
    QuantizeLinear does (torch.fake_quantize_* multiply by 1/scale, which moves some ties a level)."""
    s = _broadcast_scale(scale.to(x.dtype), x, axis)
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


class Int8FakeQuant(torch.autograd.Function):
    """int8_qdq with the straight-through gradient of torch's fake_quantize ops (1 where the rounded
    value is representable, 0 where it is clipped)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
        s = _broadcast_scale(scale.to(x.dtype), x, axis)
        r = torch.round(x / s)
        ctx.save_for_backward((r >= -128) & (r <= 127))
        return torch.clamp(r, -128, 127) * s

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (inside,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grads[0] * inside, None, None


# ---------------------------------------------------------------------------------------------
# export-time op: a leaf custom op so torch.export keeps it whole and our ONNX translation decides
# the exact Q/DQ layout (zero point dtype, axis) instead of torch's decompositions.


# `name` is the quantizer's module path in the exported model: it travels into the ONNX graph as an
# attribute of each application, so every Q/DQ pair is named after its own quantizer, even where two
# quantizers see the same tensor with the same scale (the exporter would otherwise merge them) or one
# shared layer is applied several times (ALBERT).
@torch.library.custom_op("qwb::qdq", mutates_args=())
def qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, name: str = "") -> torch.Tensor:
    # The zero point's dtype decides the format (int8 or float8 E4M3), as in ONNX QuantizeLinear.
    if zero_point.dtype == torch.float8_e4m3fn:
        return fp8_e4m3_qdq(x, scale.float(), None if axis < 0 or scale.dim() == 0 else axis)
    return int8_qdq(x, scale.float(), None if axis < 0 or scale.dim() == 0 else axis)


@qdq.register_fake
def _qdq_fake(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, name: str = "") -> torch.Tensor:
    return torch.empty_like(x)


class TensorQuantizer(nn.Module):
    _amax: torch.Tensor
    _scale: torch.Tensor
    _zero_point: torch.Tensor

    def __init__(self, fmt: QuantFormat, *, num_channels: int | None = None, enabled: bool = True) -> None:
        super().__init__()
        self.fmt = fmt
        self.enabled = enabled
        self.calibrating = False
        self.export_mode = False
        self.export_name = ""  # the quantizer's module path in the exported model (set_export_mode)
        self.calibrator: HistogramCalibrator | None = None
        shape = () if fmt.axis is None else (int(num_channels or 1),)
        # Buffers (not parameters) so they travel with state_dict and become named ONNX initializers.
        self.register_buffer("_amax", torch.full(shape, float("nan")))
        self.register_buffer("_scale", torch.ones(shape))
        self.register_buffer("_zero_point", torch.zeros(shape, dtype=fmt.zero_point_dtype))
        self.learn_amax = False

    # -- scale management -----------------------------------------------------------------------
    @property
    def amax(self) -> torch.Tensor:
        return self._amax

    @property
    def is_calibrated(self) -> bool:
        return bool(torch.isfinite(self._amax).all())

    def set_amax(self, amax: torch.Tensor | float) -> None:
        value = torch.as_tensor(amax, dtype=torch.float32).reshape(self._amax.shape).clone()
        if not torch.isfinite(value).all() or bool((value <= 0).any()):
            # An all-zero channel (dead weight row) gets a tiny range instead of a zero scale, which
            # would be a division by zero in QuantizeLinear; its values are all zero anyway.
            value = torch.where(torch.isfinite(value) & (value > 0), value, torch.full_like(value, 1e-8))
        self._amax.copy_(value)
        self._scale.copy_(value / self.fmt.max_representable)

    def set_format(self, fmt: QuantFormat) -> None:
        """Switch int8 <-> fp8 (same granularity); the scale follows the current amax."""
        if (fmt.axis is None) != (self.fmt.axis is None):
            raise ValueError(f"cannot change quantizer granularity from {self.fmt.describe()} to {fmt.describe()}")
        self.fmt = fmt
        self._zero_point = torch.zeros(self._zero_point.shape, dtype=fmt.zero_point_dtype, device=self._zero_point.device)
        if self.is_calibrated:
            self._scale.copy_(self._amax / fmt.max_representable)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.calibrating:
            if self.calibrator is not None:
                self.calibrator.collect(x.detach())
            return x
        if self.export_mode:
            # Data-dependent checks cannot run under torch.export; set_export_mode checks amax first.
            axis = -1 if self.fmt.axis is None else self.fmt.axis
            return torch.ops.qwb.qdq(x, self._scale, self._zero_point, axis, self.export_name)
        if not self.is_calibrated:
            raise RuntimeError(f"quantizer {self.extra_repr()} is enabled but has no amax; calibrate first")
        if self.fmt.kind == "fp8":
            out: torch.Tensor = Fp8FakeQuant.apply(x, self._scale, self.fmt.axis)
            return out
        result: torch.Tensor = Int8FakeQuant.apply(x, self._scale, self.fmt.axis)
        return result

    def extra_repr(self) -> str:
        state = "disabled" if not self.enabled else ("calibrating" if self.calibrating else "fake-quant")
        amax = self._amax
        amax_text = f"amax={float(amax):.4g}" if amax.dim() == 0 else f"amax=[{amax.numel()} channels]"
        return f"{self.fmt.describe()}, {state}, {amax_text}"
