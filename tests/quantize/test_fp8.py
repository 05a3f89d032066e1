"""FP8 E4M3 quantization: fake-quant numerics against hand-computed E4M3 values (rounding, subnormals,
saturation at +-448), ONNX QuantizeLinear/DequantizeLinear (float8e4m3fn, opset 19) in ONNX Runtime,
the straight-through gradient, format switching, recipe validation, and the tiny BERT exported as an
FP8 Q/DQ model compared with the fake-quant PyTorch model per layer and end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows, ort_qdq
from torch import nn

from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec, recipe_from_dict
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.core.errors import RecipeError
from quant_workbench.export.qdq import export_onnx, per_layer_fidelity, qdq_summary
from quant_workbench.models.loading import load_model, to_torch, tokenize
from quant_workbench.quantize.apply import (
    calibrate,
    prepare,
    quantizers,
    set_export_mode,
    set_format,
    set_scales,
)
from quant_workbench.quantize.plan import build_plan
from quant_workbench.quantize.quantizer import FP8_E4M3_MAX, QuantFormat, TensorQuantizer, fp8_e4m3_qdq
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts

FP8 = QuantFormat("fp8", axis=None)
FP8_CHANNEL = QuantFormat("fp8", axis=0)
ENGINE = EngineSpec(provider="cpu", graph_optimization="all", threads=1)
S9 = 2.0**-9  # smallest E4M3 subnormal

# (value / scale, expected E4M3 value) — worked out by hand from the format: 4 exponent bits (bias 7),
# 3 mantissa bits, subnormals k * 2^-9 (k = 1..7), max 448, ties to even mantissa.
E4M3_CASES = [
    (0.0, 0.0),
    (1.0, 1.0),
    (1.0625, 1.0),  # tie between 1.000 and 1.001 (x 2^0) -> even 1.000
    (1.1875, 1.25),  # tie between 1.001 and 1.010 -> even 1.010
    (1.2, 1.25),
    (17.0, 16.0),  # spacing 2 in [16, 32): tie -> 16 (mantissa 000)
    (19.0, 20.0),  # tie -> 20 (mantissa 010)
    (232.0, 224.0),  # spacing 16 in [128, 256): tie between 224 (110) and 240 (111) -> 224
    (240.0, 240.0),
    (416.0, 416.0),  # spacing 32 in [256, 448]
    (440.0, 448.0),
    (448.0, 448.0),  # largest finite E4M3
    (449.0, 448.0),  # saturation (ONNX saturate=1; no NaN/inf in e4m3fn)
    (464.0, 448.0),
    (1.0e6, 448.0),
    (-1.0e6, -448.0),
    (-19.0, -20.0),
    (2.0**-6, 2.0**-6),  # smallest normal
    (7 * S9, 7 * S9),  # largest subnormal
    (3 * S9, 3 * S9),
    (0.7 * S9, S9),  # rounds up to the smallest subnormal
    (0.5 * S9, 0.0),  # tie between 0 and 2^-9 -> even (0)
    (1.5 * S9, 2 * S9),  # tie between 1 and 2 subnormal steps -> 2
    (2.5 * S9, 2 * S9),  # tie -> 2
    (0.2 * S9, 0.0),
    (-3 * S9, -3 * S9),
]


def _ort_fp8_qdq(x: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear -> DequantizeLinear with a float8e4m3fn zero point, opset 19, in ONNX Runtime."""
    return np.asarray(ort_qdq(x, scale, axis, fp8=True))


def _quantizer(amax: float | list[float], fmt: QuantFormat = FP8) -> TensorQuantizer:
    n = None if fmt.axis is None else len(amax)  # type: ignore[arg-type]
    q = TensorQuantizer(fmt, num_channels=n)
    q.set_amax(torch.tensor(amax))
    return q


# ---------------------------------------------------------------------------------------------
# format and numerics


def test_fp8_format_scale_and_zero_point() -> None:
    q = _quantizer(896.0)
    assert FP8.max_representable == FP8_E4M3_MAX == 448.0
    assert float(q._scale) == 2.0  # amax / 448
    assert q._zero_point.dtype == torch.float8_e4m3fn
    assert float(q._zero_point.float()) == 0.0
    assert "fp8" in q.extra_repr()


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.0078125])
def test_fp8_round_trip_matches_hand_computed_e4m3(scale: float) -> None:
    ratio = torch.tensor([c[0] for c in E4M3_CASES], dtype=torch.float64)
    expected = torch.tensor([c[1] for c in E4M3_CASES], dtype=torch.float64) * scale
    x = (ratio * scale).float()  # powers of two: exact in float32
    q = _quantizer(448.0 * scale)
    got = q(x)
    assert torch.equal(got.double(), expected.float().double()), (got, expected)
    # the export op (torch.ops.qwb.qdq with a float8 zero point) computes the same
    assert torch.equal(torch.ops.qwb.qdq(x, q._scale, q._zero_point, -1), got)
    # and ONNX Runtime's QuantizeLinear/DequantizeLinear (saturate=1) agrees bit for bit
    ort_out = _ort_fp8_qdq(x.numpy(), np.asarray(scale, np.float32))
    np.testing.assert_array_equal(ort_out, got.numpy())


def test_fp8_matches_onnx_on_a_dense_sweep() -> None:
    x = np.concatenate([np.linspace(-600, 600, 40001), np.linspace(-0.02, 0.02, 40001)]).astype(np.float32)
    for scale in (1.0, 0.37, 3.1e-3):
        xs = (x * np.float32(scale)).astype(np.float32)
        got = fp8_e4m3_qdq(torch.from_numpy(xs), torch.tensor(scale, dtype=torch.float32)).numpy()
        np.testing.assert_array_equal(_ort_fp8_qdq(xs, np.asarray(scale, np.float32)), got)


def test_fp8_per_channel_matches_hand_computation_and_onnx() -> None:
    amax = [448.0, 4.0, 0.5]
    q = _quantizer(amax, FP8_CHANNEL)
    scales = torch.tensor(amax) / 448.0
    w = torch.tensor([[1.0625, 449.0, -1e4], [0.03, -0.011, 3.9], [0.5, 0.0001, -0.26]])
    expected = torch.stack([(w[i] / scales[i]).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scales[i] for i in range(3)])
    got = q(w)
    assert torch.equal(got, expected)
    assert got[0].tolist() == [1.0, 448.0, -448.0]
    np.testing.assert_array_equal(_ort_fp8_qdq(w.numpy(), scales.numpy(), axis=0), got.numpy())


def test_fp8_straight_through_gradient() -> None:
    q = _quantizer(4.48)  # scale 0.01: representable range +-4.48
    x = torch.tensor([0.1, -3.0, 4.4, 5.0, -9.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # zero outside the saturating range
    qc = _quantizer([1.0, 2.0], FP8_CHANNEL)
    w = torch.tensor([[0.5, 3.0], [1.0, -2.5]], requires_grad=True)
    qc(w).sum().backward()
    assert w.grad is not None
    assert w.grad.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_set_format_switches_zero_point_dtype_and_scale() -> None:
    from quant_workbench.quantize.modules import QuantLinear

    ql = QuantLinear(nn.Linear(4, 3), QuantFormat("int8", axis=0))
    lin = nn.Sequential(ql)
    q = ql.input_quantizer
    q.set_amax(127.0)
    assert float(q._scale) == 1.0
    set_format(lin, "fp8")
    assert q.fmt.kind == "fp8" and q._zero_point.dtype == torch.float8_e4m3fn
    assert float(q._scale) == pytest.approx(127.0 / 448.0)
    assert ql.weight_quantizer.fmt == QuantFormat("fp8", axis=0)
    set_format(lin, "int8")
    assert q._zero_point.dtype == torch.int8 and float(q._scale) == 1.0
    with pytest.raises(ValueError, match="granularity"):
        q.set_format(QuantFormat("fp8", axis=0))


# ---------------------------------------------------------------------------------------------
# recipe validation


def _recipe(make_recipe: Any, **quant: Any) -> dict[str, Any]:
    d = dict(make_recipe(methods=["max", "mse"]))
    d["quantization"] = {**d["quantization"], **quant}
    d["export"] = {**d["export"], "opset": 19}
    return d


def test_recipe_fp8_needs_opset_19(make_recipe: Any) -> None:
    d = _recipe(make_recipe, format="fp8")
    assert recipe_from_dict(d).quantization.schemes == ["fp8"]
    d["export"]["opset"] = 18
    with pytest.raises(RecipeError, match=r"export.opset >= 19"):
        recipe_from_dict(d)


def test_recipe_fp8_rejects_entropy_by_name(make_recipe: Any) -> None:
    d = _recipe(make_recipe, format="fp8")
    d["quantization"]["calibration"] = {**d["quantization"]["calibration"], "methods": ["max", "entropy"]}
    with pytest.raises(RecipeError, match="'entropy'.*not defined for fp8"):
        recipe_from_dict(d)
    d = _recipe(make_recipe, compare=["int8", "fp8"])
    d["quantization"]["calibration"] = {**d["quantization"]["calibration"], "methods": ["entropy"]}
    with pytest.raises(RecipeError, match="'entropy'"):
        recipe_from_dict(d)


def test_recipe_schemes(make_recipe: Any) -> None:
    assert recipe_from_dict(_recipe(make_recipe)).quantization.schemes == ["int8"]
    sq = recipe_from_dict(_recipe(make_recipe, smoothquant={"alpha": 0.5})).quantization
    assert sq.schemes == ["int8-smoothquant"] and sq.smoothquant is not None and sq.smoothquant.alphas == [0.5]
    both = recipe_from_dict(_recipe(make_recipe, compare=["int8", "int8-smoothquant", "fp8"], smoothquant={"alpha": [0.5, 0.75]}))
    assert both.quantization.schemes == ["int8", "int8-smoothquant", "fp8"]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"compare": ["int8", "int8-smoothquant"]}, "smoothquant is not set"),
        ({"compare": ["int8"], "smoothquant": {"alpha": 0.5}}, "no 'int8-smoothquant'"),
        ({"compare": ["fp8", "fp8"]}, "must not repeat"),
        ({"compare": ["fp8"], "format": "fp8"}, "conflicts with quantization.compare"),
        ({"format": "fp8", "smoothquant": {"alpha": 0.5}}, "int8 only"),
        ({"smoothquant": {"alpha": 1.5}}, r"\[0, 1\]"),
        ({"smoothquant": {"alpha": 0.5, "beta": 1}}, "unknown key"),
        ({"compare": ["int4"]}, "compare"),
    ]
    for quant, message in bad:
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict(_recipe(make_recipe, **quant))


# ---------------------------------------------------------------------------------------------
# the tiny BERT as an FP8 Q/DQ ONNX model


@pytest.fixture(scope="module")
def fp8_export(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    loaded = load_model(ModelSpec(source=str(tiny_bert_dir), max_seq_length=TINY_SEQ))
    plan = build_plan(loaded.model.hf, QuantSpec())
    prepare(loaded.model.hf, plan, per_channel_weights=True, kind="fp8")
    texts = [t for t, _ in make_rows()]

    def feed(batch: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(loaded.tokenizer, batch, TINY_SEQ, loaded.input_names))

    def loop(model: nn.Module) -> None:
        for start in range(0, 32, 16):
            model(**feed(texts[start : start + 16]))

    calibrators = calibrate(loaded.model, loop)
    set_scales(loaded.model, calibrators, "mse")
    example = feed(texts[200:208])
    path = export_onnx(loaded.model, tmp_path_factory.mktemp("fp8") / "fp8-mse.qdq.onnx", example, loaded.input_names, loaded.output_name, 19)
    return {"loaded": loaded, "path": path, "example": example, "feed": feed, "texts": texts}


def test_fp8_quantizers_everywhere_and_export_restores_mode(fp8_export: dict[str, Any]) -> None:
    qs = quantizers(fp8_export["loaded"].model)
    assert qs and all(q.fmt.kind == "fp8" for q in qs.values())
    assert not any(q.export_mode for q in qs.values())
    set_export_mode(fp8_export["loaded"].model, False)


def test_fp8_onnx_graph_uses_float8_zero_points_at_opset_19(fp8_export: dict[str, Any]) -> None:
    summary = qdq_summary(fp8_export["path"])
    assert summary["opset"] == 19
    assert summary["zero_point_types"] == ["FLOAT8E4M3FN"]
    assert summary["quantize_linear"] == summary["dequantize_linear"] >= 24  # 12 Linears x (input, weight)
    assert summary["per_channel_axes"] == [0]
    onnx.checker.check_model(str(fp8_export["path"]), full_check=True)


def test_fp8_onnx_per_layer_matches_fake_quant(fp8_export: dict[str, Any]) -> None:
    layers = per_layer_fidelity(fp8_export["path"], fp8_export["loaded"].model, fp8_export["example"], lambda b: OrtEngine(b, ENGINE, "layer"))
    assert len(layers) == 12
    for module, layer in layers.items():
        assert layer.mean_cosine >= 0.99999, (module, layer)
        assert layer.max_abs_diff < 1e-4, (module, layer)


def test_fp8_onnx_end_to_end_matches_fake_quant(fp8_export: dict[str, Any]) -> None:
    feed = fp8_export["feed"](fp8_export["texts"][100:132])
    with torch.no_grad():
        ref = fp8_export["loaded"].model(**feed).numpy()
    with OrtEngine(fp8_export["path"], ENGINE, "fp8") as eng:
        got = eng({k: v.numpy() for k, v in feed.items()})
    cos = cosine_rows(got, ref)
    assert cos.min() > 0.9999
    assert np.abs(got - ref).max() < 1e-3


def test_ort_keeps_fp8_qdq_as_float_matmuls(fp8_export: dict[str, Any]) -> None:
    counts = optimized_op_counts(fp8_export["path"], ENGINE)
    assert counts["integer_matmuls"] == 0  # ONNX Runtime CPU has no FP8 GEMM: emulated through Q/DQ
    assert counts["remaining_quantize_linear"] > 0


def test_fp8_relu_before_quantize_is_kept_by_onnxruntime(tmp_path: Path) -> None:
    """ONNX Runtime's Relu->QuantizeLinear rewrite treats a float8 zero point like uint8 and would drop the
    Relu; the engine disables it (runtime/onnxruntime.py)."""
    from quant_workbench.quantize.modules import QuantLinear

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = QuantLinear(nn.Linear(8, 8), QuantFormat("fp8", axis=0), QuantFormat("fp8"))
            self.b = QuantLinear(nn.Linear(8, 4), QuantFormat("fp8", axis=0), QuantFormat("fp8"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.b(torch.relu(self.a(x)))
            return out

    torch.manual_seed(0)
    net = Net()
    for lin in (net.a, net.b):
        lin.input_quantizer.set_amax(3.0)
        lin.weight_quantizer.set_amax(lin.weight.detach().abs().amax(1))
    x = torch.randn(6, 8)
    path = export_onnx(net, tmp_path / "relu.onnx", {"x": x}, ["x"], "y", 19)
    with torch.no_grad():
        ref = net(x).numpy()
    with OrtEngine(path, ENGINE, "relu") as eng:
        got = eng({"x": x.numpy()})
    assert np.abs(got - ref).max() < 1e-5
