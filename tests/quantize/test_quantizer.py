"""TensorQuantizer numerics (INT8, symmetric, zero point 0) against hand computation and ONNX Q/DQ,
straight-through gradients, calibration mode, the export op, and error cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_fixtures import ort_qdq
from torch import nn
from torch.nn import functional as F

from quant_workbench.core.errors import WorkbenchError
from quant_workbench.quantize.apply import calibrate, set_export_mode, set_scales
from quant_workbench.quantize.modules import QuantAdd, QuantLinear, QuantMatMul
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.quantizer import QuantFormat, TensorQuantizer

PER_TENSOR = QuantFormat("int8", axis=None)
PER_CHANNEL = QuantFormat("int8", axis=0)


def _ref_qdq(x: np.ndarray, scale: np.ndarray | float, axis: int | None = None) -> np.ndarray:
    """Hand computation: round half to even of x / scale, saturate to int8 [-128, 127], times scale."""
    s = np.asarray(scale, dtype=np.float64)
    if axis is not None and s.ndim:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    q = np.clip(np.rint(x.astype(np.float64) / s), -128, 127)
    return (q * s).astype(np.float32)


def _quantizer(amax: float | list[float], fmt: QuantFormat = PER_TENSOR) -> TensorQuantizer:
    n = None if fmt.axis is None else len(amax)  # type: ignore[arg-type]
    q = TensorQuantizer(fmt, num_channels=n)
    q.set_amax(torch.tensor(amax))
    return q


def _ort_qdq(x: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Run ONNX QuantizeLinear -> DequantizeLinear (int8 zero point 0) in ONNX Runtime."""
    return np.asarray(ort_qdq(x, scale, axis))


# ---------------------------------------------------------------------------------------------
# scales and numerics


def test_scale_is_amax_over_127_and_zero_point_is_int8_zero() -> None:
    q = _quantizer(2.54)
    assert q.is_calibrated
    assert float(q.amax) == pytest.approx(2.54)
    assert float(q._scale) == pytest.approx(2.54 / 127)
    assert q._zero_point.dtype == torch.int8 and int(q._zero_point) == 0
    qc = _quantizer([1.0, 2.0, 0.5], PER_CHANNEL)
    assert qc._scale.shape == (3,)
    torch.testing.assert_close(qc._scale, torch.tensor([1.0, 2.0, 0.5]) / 127)
    assert qc._zero_point.dtype == torch.int8 and not qc._zero_point.any()


def test_nonpositive_or_nonfinite_amax_gets_a_tiny_range() -> None:
    q = _quantizer([0.0, 1.0, float("nan")], PER_CHANNEL)
    assert q.is_calibrated
    assert float(q.amax[0]) == pytest.approx(1e-8) and float(q.amax[2]) == pytest.approx(1e-8)
    assert float(q.amax[1]) == 1.0
    # a dead (all-zero) row quantizes to exactly zero
    w = torch.zeros(3, 4)
    w[1] = 0.3
    out = q(w)
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[2], torch.zeros(4))


def test_per_tensor_fake_quant_matches_hand_computation() -> None:
    s = 2.0**-6  # a power of two keeps x / s exact, so ties are real ties
    q = _quantizer(127 * s)
    k = np.arange(-300, 301, dtype=np.float32)
    x = np.concatenate([k * s / 2, np.array([0.3 * s, 0.49 * s, 0.51 * s, -0.51 * s, 1e-9], np.float32)])
    got = q(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, _ref_qdq(x, s))


def test_rounding_is_half_to_even() -> None:
    s = 2.0**-4
    q = _quantizer(127 * s)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]) * s
    expect = torch.tensor([0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 126.0]) * s
    torch.testing.assert_close(q(x), expect, rtol=0, atol=0)


def test_clipping_saturates_at_the_int8_range() -> None:
    amax = 1.27
    q = _quantizer(amax)
    s = amax / 127
    x = torch.tensor([amax, 1.5 * amax, 100.0, -amax, -1.5 * amax, -100.0])
    got = q(x)
    # positive side: +127 * scale == amax
    torch.testing.assert_close(got[:3], torch.full((3,), 127 * s))
    # negative side: -amax is exactly representable; beyond it the int8 grid saturates at -128 * scale,
    # exactly as ONNX QuantizeLinear (saturating to [-128, 127]) does
    torch.testing.assert_close(got[3], torch.tensor(-127 * s))
    torch.testing.assert_close(got[4:], torch.full((2,), -128 * s))


def test_per_channel_fake_quant_matches_hand_computation() -> None:
    scales = np.array([2.0**-6, 2.0**-7, 2.0**-5], dtype=np.float32)
    q = _quantizer((127 * scales).tolist(), PER_CHANNEL)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(3, 50, generator=g) * 1.2).numpy()
    w[:, 0] = [5.0, -5.0, 5.0]  # clipped in every row
    w[:, 1] = scales * 2.5  # ties
    got = q(torch.from_numpy(w)).numpy()
    np.testing.assert_array_equal(got, _ref_qdq(w, scales, axis=0))
    # each row uses its own scale: row 1 (smallest scale) clips at 127 * 2^-7
    assert got[1].max() <= 127 * scales[1] + 1e-7


def test_fake_quant_matches_onnx_qdq_off_ties() -> None:
    """Random values (no exact ties): fake-quant equals ONNX Runtime's QuantizeLinear/DequantizeLinear."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 48)) * 0.8).astype(np.float32)
    x[0, :4] = [9.0, -9.0, 2.0, -2.0]  # saturation on both sides
    q = _quantizer(1.7)
    np.testing.assert_allclose(q(torch.from_numpy(x)).numpy(), _ort_qdq(x, q._scale.numpy()), rtol=0, atol=1e-7)
    amax = np.abs(x).max(axis=1) * 0.9
    qc = _quantizer(amax.tolist(), PER_CHANNEL)
    np.testing.assert_allclose(qc(torch.from_numpy(x)).numpy(), _ort_qdq(x, qc._scale.numpy(), axis=0), rtol=0, atol=1e-7)


def test_fake_quant_matches_onnx_qdq_bit_exact_at_ties() -> None:
    q = _quantizer(0.7391)
    s = q._scale.numpy()
    ties = ((np.arange(-130, 130) + 0.5).astype(np.float32) * s).astype(np.float32)
    np.testing.assert_array_equal(q(torch.from_numpy(ties)).numpy(), _ort_qdq(ties, s))


# ---------------------------------------------------------------------------------------------
# gradients


def test_straight_through_gradient_per_tensor() -> None:
    amax = 2.0
    q = _quantizer(amax)
    x = torch.tensor([0.0, 0.3, -0.7, 1.99, -1.99, 2.5, -2.5, 10.0, -10.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None
    expect = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(x.grad, expect)


def test_straight_through_gradient_per_channel() -> None:
    q = _quantizer([1.0, 4.0], PER_CHANNEL)
    w = torch.tensor([[0.5, 3.0], [0.5, 3.0]], requires_grad=True)
    q(w).sum().backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


def test_quant_linear_gradient_reaches_original_weight() -> None:
    lin = nn.Linear(4, 3)
    ql = QuantLinear(lin, PER_CHANNEL)
    assert ql.weight is lin.weight and ql.bias is lin.bias
    ql.input_quantizer.set_amax(10.0)
    ql.weight_quantizer.set_amax(lin.weight.detach().abs().amax(dim=1))
    ql(torch.randn(2, 4)).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# modes


def test_disabled_quantizer_is_identity_even_uncalibrated() -> None:
    q = TensorQuantizer(PER_TENSOR, enabled=False)
    x = torch.randn(5)
    assert q(x) is x


def test_calibration_mode_passes_through_and_collects() -> None:
    q = TensorQuantizer(PER_TENSOR)
    q.calibrating = True
    q.calibrator = HistogramCalibrator("t", num_bins=256)
    x1 = torch.tensor([0.5, -3.0, 1.0])
    x2 = torch.tensor([[2.0, -1.0], [0.25, 0.0]])
    assert torch.equal(q(x1), x1)
    assert torch.equal(q(x2), x2)
    assert q.calibrator.num_collected == 7
    assert q.calibrator.amax_max == 3.0
    assert not q.is_calibrated  # calibration collects; it does not set amax


def test_uncalibrated_enabled_quantizer_raises() -> None:
    q = TensorQuantizer(PER_TENSOR)
    with pytest.raises(RuntimeError, match="no amax"):
        q(torch.randn(3))


def test_set_export_mode_refuses_uncalibrated_quantizers() -> None:
    model = nn.Sequential(QuantLinear(nn.Linear(4, 3), PER_CHANNEL))
    with pytest.raises(WorkbenchError, match=r"0\.input_quantizer"):
        set_export_mode(model, True)


@pytest.mark.parametrize("fmt", [PER_TENSOR, PER_CHANNEL])
def test_export_op_equals_fake_quant(fmt: QuantFormat) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=g) * 2
    amax = 1.5 if fmt.axis is None else (x.abs().amax(dim=1) * 0.8).tolist()
    q = _quantizer(amax, fmt)
    fake = q(x)
    axis = -1 if fmt.axis is None else fmt.axis
    direct = torch.ops.qwb.qdq(x, q._scale, q._zero_point, axis)
    torch.testing.assert_close(direct, fake, rtol=0, atol=0)
    q.export_mode = True
    torch.testing.assert_close(q(x), fake, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# quantized modules


def test_quant_linear_forward_is_linear_of_quantized_operands() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 5)
    ql = QuantLinear(lin, PER_CHANNEL)
    x = torch.randn(3, 8)
    ql.input_quantizer.set_amax(2.0)
    w_amax = lin.weight.detach().abs().amax(dim=1)
    ql.weight_quantizer.set_amax(w_amax)
    xq = torch.from_numpy(_ref_qdq(x.numpy(), 2.0 / 127))
    wq = torch.from_numpy(_ref_qdq(lin.weight.detach().numpy(), (w_amax / 127).numpy(), axis=0))
    torch.testing.assert_close(ql(x), F.linear(xq, wq, lin.bias), rtol=1e-6, atol=1e-6)
    # back to float shares the same parameters
    assert ql.to_float().weight is lin.weight


def test_quant_matmul_and_add_quantize_both_operands() -> None:
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    mm = QuantMatMul()
    mm.input_quantizer.set_amax(a.abs().max())
    mm.other_quantizer.set_amax(b.abs().max())
    torch.testing.assert_close(mm(a, b), mm.input_quantizer(a) @ mm.other_quantizer(b))
    add = QuantAdd()
    c = torch.randn(2, 3, 4)
    add.input_quantizer.set_amax(1.0)
    add.other_quantizer.set_amax(2.0)
    torch.testing.assert_close(add(a, c), add.input_quantizer(a) + add.other_quantizer(c))
    add.input_quantizer.enabled = add.other_quantizer.enabled = False
    torch.testing.assert_close(add(a, c), a + c)


# ---------------------------------------------------------------------------------------------
# calibrate() / set_scales() on a small module


def _two_layer() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(QuantLinear(nn.Linear(4, 6), PER_CHANNEL), nn.ReLU(), QuantLinear(nn.Linear(6, 2), PER_TENSOR))


def _linear(model: nn.Sequential, i: int) -> QuantLinear:
    m = model[i]
    assert isinstance(m, QuantLinear)
    return m


def test_calibrate_collects_every_activation_quantizer_and_restores_modes() -> None:
    model = _two_layer()
    _linear(model, 2).input_quantizer.enabled = False  # disabled points are calibrated too (cache serves any selection)
    x = torch.randn(16, 4) * 3
    cals = calibrate(model, lambda m: m(x), num_bins=256)
    assert set(cals) == {"0.input_quantizer", "2.input_quantizer"}
    assert cals["0.input_quantizer"].amax_max == pytest.approx(float(x.abs().max()))
    assert cals["0.input_quantizer"].num_collected == x.numel()
    assert _linear(model, 2).input_quantizer.enabled is False  # restored
    assert not any(getattr(q, "calibrating", False) for q in model.modules())
    amax = set_scales(model, cals, "max")
    assert set(amax) == {"0.input_quantizer"}  # disabled quantizers get no activation scale
    assert _linear(model, 0).weight_quantizer.is_calibrated and _linear(model, 2).weight_quantizer.is_calibrated
    torch.testing.assert_close(_linear(model, 0).weight_quantizer.amax, _linear(model, 0).weight.detach().abs().amax(dim=1))
    torch.testing.assert_close(_linear(model, 2).weight_quantizer.amax, _linear(model, 2).weight.detach().abs().max())


def test_nan_during_calibration_names_the_quantizer() -> None:
    model = _two_layer()
    bad = torch.randn(4, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(WorkbenchError) as info:
        calibrate(model, lambda m: m(bad))
    assert "0.input_quantizer" in str(info.value)
    assert "NaN" in str(info.value)
    # the model left calibration mode
    assert not any(getattr(q, "calibrating", False) for q in model.modules())


def test_inf_deeper_in_the_model_names_that_quantizer() -> None:
    model = _two_layer()
    with torch.no_grad():
        _linear(model, 0).weight[0, 0] = float("inf")
    x = torch.ones(2, 4)
    with pytest.raises(WorkbenchError, match=r"2\.input_quantizer"):
        calibrate(model, lambda m: m(x))


def test_set_scales_without_statistics_for_an_enabled_quantizer() -> None:
    model = _two_layer()
    with pytest.raises(WorkbenchError, match="no calibration statistics for quantizer 0.input_quantizer"):
        set_scales(model, {}, "max")
