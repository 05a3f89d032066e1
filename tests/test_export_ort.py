"""Engine-aware export for ONNX Runtime CPU on the tiny random BERT: the fused float graph, the fused INT8
lowering from the calibrated scales, the U8 Q/DQ graph, the fallback when an engine graph disagrees with
the fake-quant model (a saturating U8 x S8 kernel), int8-dynamic, and the recipe rules around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from tiny_fixtures import TINY_SEQ, make_rows, recipe_dict

import quant_workbench.export.graphs as engine_graphs
from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec, recipe_from_dict
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.core.errors import RecipeError
from quant_workbench.core.results import VariantResult
from quant_workbench.export.graphs import EngineGraphs
from quant_workbench.export.ort import (
    U8_ZERO_POINT,
    LoweringError,
    export_fused_float,
    fused_op_counts,
    lower_int8,
    map_linears,
    qdq_to_u8_activations,
)
from quant_workbench.export.qdq import export_onnx
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate, prepare, set_scales
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.plan import build_plan
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts
from quant_workbench.selection import select_variant

ENGINE = EngineSpec(provider="cpu", graph_optimization="all", threads=1)
TEXTS = [t for t, _ in make_rows()]


def _feed(loaded: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    return to_torch(tokenize(loaded.tokenizer, texts, TINY_SEQ, loaded.input_names))


def _run(path: Path, example: dict[str, torch.Tensor]) -> np.ndarray:
    with OrtEngine(path, ENGINE, path.stem) as eng:
        return eng({k: v.numpy() for k, v in example.items()})


def _prepared(model_dir: Path, **spec: Any) -> tuple[LoadedModel, dict[str, torch.Tensor]]:
    loaded = load_model(ModelSpec(source=str(model_dir), max_seq_length=TINY_SEQ))
    plan = build_plan(loaded.model.hf, QuantSpec(**spec))
    prepare(loaded.model.hf, plan, per_channel_weights=True)

    def loop(model: torch.nn.Module) -> None:
        for i in range(0, 32, 16):
            model(**_feed(loaded, TEXTS[i : i + 16]))

    calibrators = calibrate(loaded.model, loop, num_bins=2048)
    set_scales(loaded.model, calibrators, "max")
    # variable lengths: padded rows are where a lost attention mask would show
    example = _feed(loaded, [TEXTS[i] * (1 + i % 3) for i in range(40, 52)])
    return loaded, example


@pytest.fixture(scope="module")
def fused(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, dict[str, torch.Tensor], Path]:
    loaded, example = _prepared(tiny_bert_dir)
    path = tmp_path_factory.mktemp("fused") / "float.fused.onnx"
    export_fused_float(loaded.model, loaded.model.hf, path, example, loaded.input_names, loaded.output_name)
    return loaded, example, path


def test_fused_float_has_the_transformer_fusions_and_matches_pytorch(fused: tuple[LoadedModel, dict[str, torch.Tensor], Path]) -> None:
    loaded, example, path = fused
    # SkipLayerNormalization is deliberately kept apart (slower than Add + LayerNormalization in ORT 1.32 CPU)
    assert fused_op_counts(path) == {"EmbedLayerNormalization": 1, "Attention": 2, "LayerNormalization": 4, "BiasGelu": 2}
    from quant_workbench.quantize.smoothquant import float_mode

    with torch.no_grad(), float_mode(loaded.model):
        ref = loaded.model(**example).numpy()
    assert example["attention_mask"].min() == 0  # the check covers padded rows
    assert np.abs(_run(path, example) - ref).max() <= 1e-4


def test_standard_fusion_options_give_skip_layer_norm(fused: tuple[LoadedModel, dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    loaded, example, _ = fused
    path = tmp_path / "ref-ort-float.onnx"
    export_fused_float(loaded.model, loaded.model.hf, path, example, loaded.input_names, loaded.output_name, skip_layer_norm=True)
    assert fused_op_counts(path)["SkipLayerNormalization"] == 4


def test_lowered_int8_runs_every_linear_on_integer_kernels_with_the_calibrated_scales(fused: tuple[LoadedModel, dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    loaded, example, path = fused
    out = tmp_path / "int8.fused.onnx"
    info = lower_int8(path, loaded.model.hf, out)
    assert (info.quantized_attention, info.quantized_matmuls, info.left_float) == (2, 6, [])
    counts = optimized_op_counts(out, ENGINE)
    assert counts["integer_ops"] == {"MatMulIntegerToFloat": 6, "QAttention": 2} and counts["float_matmuls"] == 0
    model = onnx.load(str(out))
    # activations U8 with zero point 128 (ONNX Runtime's fast x86 kernels), weights S8
    zps = {i.name: i for i in model.graph.initializer}
    assert zps[U8_ZERO_POINT].data_type == TensorProto.UINT8
    assert all(i.data_type == TensorProto.INT8 for i in model.graph.initializer if i.name.endswith("weight_int8"))
    # the activation scale is the quantizer's own: amax / 127
    lin = loaded.model.hf.get_submodule("encoder.layer.0.intermediate.dense")
    assert isinstance(lin, QuantLinear)
    q = lin.input_quantizer
    scale = next(i for i in model.graph.initializer if i.name == "encoder.layer.0.intermediate.dense.input_quantizer._scale")
    assert float(onnx.numpy_helper.to_array(scale)) == pytest.approx(float(q.amax) / 127, rel=1e-6)
    with torch.no_grad():
        fake = loaded.model(**example).numpy()
    assert cosine_rows(_run(out, example), fake).mean() > 0.999


def test_a_float_kept_linear_stays_a_float_matmul(tiny_bert_dir: Path, tmp_path: Path) -> None:
    loaded, example = _prepared(tiny_bert_dir, ignore=["encoder.layer.1.output.dense"])
    src = tmp_path / "float.fused.onnx"
    export_fused_float(loaded.model, loaded.model.hf, src, example, loaded.input_names, loaded.output_name)
    out = tmp_path / "int8.fused.onnx"
    info = lower_int8(src, loaded.model.hf, out)
    assert (info.quantized_attention, info.quantized_matmuls) == (2, 5)
    counts = optimized_op_counts(out, ENGINE)
    assert counts["float_matmuls"] == 1 and counts["integer_matmuls"] == 7


def test_half_quantized_qkv_cannot_use_the_fused_projection(tiny_bert_dir: Path, tmp_path: Path) -> None:
    loaded, example = _prepared(tiny_bert_dir, ignore=["encoder.layer.0.attention.self.value"])
    src = tmp_path / "float.fused.onnx"
    export_fused_float(loaded.model, loaded.model.hf, src, example, loaded.input_names, loaded.output_name)
    with pytest.raises(LoweringError, match="share one fused projection"):
        lower_int8(src, loaded.model.hf, tmp_path / "x.onnx")


def test_u8_qdq_moves_only_activation_zero_points(fused: tuple[LoadedModel, dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    loaded, example, _ = fused
    qdq = tmp_path / "int8.qdq.onnx"
    export_onnx(loaded.model, qdq, example, loaded.input_names, loaded.output_name, 18)
    u8 = tmp_path / "int8.u8.onnx"
    moved = qdq_to_u8_activations(qdq, u8)
    assert moved == 12
    model = onnx.load(str(u8))
    inits = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            assert (n.input[2] == U8_ZERO_POINT) == (n.input[0] not in inits)  # weights keep their S8 zero point
    assert optimized_op_counts(u8, ENGINE)["integer_matmuls"] == 12
    # same grid shifted by 128: the U8 graph computes what the S8 graph computes
    assert cosine_rows(_run(u8, example), _run(qdq, example)).mean() > 0.9999


def _graphs(tmp_path: Path, tiny_bert_dir: Path, csv: Path) -> EngineGraphs:
    recipe = recipe_from_dict(recipe_dict(tmp_path, tiny_bert_dir, csv))
    return EngineGraphs(recipe, tmp_path, "base", say=lambda s: None)


def test_engine_graph_that_disagrees_falls_back(fused: tuple[LoadedModel, dict[str, torch.Tensor], Path], tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saturating U8 x S8 kernel (CPUs without VNNI) shows as an engine graph far from the fake-quant model."""
    loaded, example, src = fused
    qdq = tmp_path / "int8-max.qdq.onnx"
    export_onnx(loaded.model, qdq, example, loaded.input_names, loaded.output_name, 18)
    graphs = _graphs(tmp_path, tiny_bert_dir, tiny_csv)
    graphs.fused_float_path = src
    real_run = engine_graphs._run

    def saturating(path: Path, recipe: Any, feed: dict[str, torch.Tensor]) -> np.ndarray:
        out = real_run(path, recipe, feed)
        return -out if path.name.endswith(".fused.onnx") else out

    monkeypatch.setattr(engine_graphs, "_run", saturating)
    variant = VariantResult(name="int8-max", precision="int8", fidelity={"end_to_end": {"fake_quant_vs_float_cosine": 0.999}})
    chosen = graphs.for_variant(loaded, "int8-max", qdq, example, variant)
    assert chosen.name == "int8-max.u8.onnx"
    assert variant.fidelity["engine_graph"]["graph"] == "qdq-u8"
    assert any("fused-int8 graph disagrees" in n for n in variant.fidelity["engine_graph"]["notes"])

    def all_bad(path: Path, recipe: Any, feed: dict[str, torch.Tensor]) -> np.ndarray:
        return -real_run(path, recipe, feed)

    monkeypatch.setattr(engine_graphs, "_run", all_bad)
    variant = VariantResult(name="int8-max", precision="int8", fidelity={"end_to_end": {"fake_quant_vs_float_cosine": 0.999}})
    assert graphs.for_variant(loaded, "int8-max", qdq, example, variant) == qdq  # the checked S8 graph
    assert variant.fidelity["engine_graph"]["graph"] == "qdq"


def test_quantized_attention_matmuls_use_the_u8_qdq_graph(tiny_bert_dir: Path, tmp_path: Path, tiny_csv: Path) -> None:
    loaded, example = _prepared(tiny_bert_dir, quantize_attention_matmuls=True)
    qdq = tmp_path / "int8-max.qdq.onnx"
    export_onnx(loaded.model, qdq, example, loaded.input_names, loaded.output_name, 18)
    graphs = _graphs(tmp_path, tiny_bert_dir, tiny_csv)
    graphs.fused_float_path = tmp_path / "unused.onnx"
    variant = VariantResult(name="int8-max", precision="int8", fidelity={"end_to_end": {"fake_quant_vs_float_cosine": 0.99}})
    assert graphs.for_variant(loaded, "int8-max", qdq, example, variant).name == "int8-max.u8.onnx"
    assert "attention matmuls are quantized" in variant.fidelity["engine_graph"]["notes"][0]
    assert optimized_op_counts(tmp_path / "int8-max.u8.onnx", ENGINE)["integer_matmuls"] == 16


def test_int8_dynamic_honours_ignore(tiny_bert_dir: Path, tmp_path: Path, tiny_csv: Path) -> None:
    loaded, example = _prepared(tiny_bert_dir, ignore=["encoder.layer.1.output.dense"])
    src = tmp_path / "float.fused.onnx"
    export_fused_float(loaded.model, loaded.model.hf, src, example, loaded.input_names, loaded.output_name)
    assert sorted(len(v) for v in map_linears(src, loaded.model.hf).values()) == [1] * 6 + [3, 3]
    graphs = _graphs(tmp_path, tiny_bert_dir, tiny_csv)
    graphs.fused_float_path = src
    variant = VariantResult(name="int8-dynamic", precision="int8")
    with torch.no_grad():
        ref = loaded.model(**example).numpy()
    path = graphs.dynamic_variant(loaded, example, ref, variant)
    counts = optimized_op_counts(path, ENGINE)
    assert counts["integer_ops"] == {"DynamicQuantizeMatMul": 5, "QAttention": 2} and counts["float_matmuls"] == 1
    assert variant.fidelity["engine_graph"]["linears_quantized"] == 11
    assert variant.fidelity["engine_graph"]["passed"]  # its gate: no further from float than min_cosine allows


def test_int8_dynamic_that_fails_its_gate_is_removed_with_the_numbers(
    fused: tuple[LoadedModel, dict[str, torch.Tensor], Path], tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quant_workbench.core.errors import ExportError

    loaded, example, src = fused
    graphs = _graphs(tmp_path, tiny_bert_dir, tiny_csv)
    graphs.fused_float_path = src
    with torch.no_grad():
        ref = loaded.model(**example).numpy()
    real_run = engine_graphs._run
    # a saturating kernel: the dynamic graph's outputs far from float
    monkeypatch.setattr(engine_graphs, "_run", lambda path, recipe, feed: real_run(path, recipe, feed) + 0.5 * np.sign(real_run(path, recipe, feed)) * (np.arange(ref.shape[-1]) % 2))
    variant = VariantResult(name="int8-dynamic", precision="int8")
    with pytest.raises(ExportError, match=r"int8-dynamic failed its fidelity check: mean cosine to float 0\.\d+ < 0\.\d+"):
        graphs.dynamic_variant(loaded, example, ref, variant, quantization_noise=0.001)
    check = variant.fidelity["engine_graph"]
    assert not check["passed"] and check["mean_cosine_vs_float"] < check["threshold"]
    assert check["static_max_fake_quant_vs_float_cosine"] == pytest.approx(0.999)
    # a larger quantization noise of the static model of the same Linears allows more: the same graph passes
    variant = VariantResult(name="int8-dynamic", precision="int8")
    monkeypatch.setattr(engine_graphs, "_run", real_run)
    graphs.dynamic_variant(loaded, example, ref, variant, quantization_noise=0.001)
    assert variant.fidelity["engine_graph"]["passed"]


def test_selection_never_picks_a_reference_row() -> None:
    n = 200
    correct = {"float": np.ones(n, bool), "ref:ort-dynamic": np.ones(n, bool), "int8-max": np.arange(n) < 140}
    ref = VariantResult(name="ref:ort-dynamic", precision="int8", metrics={"accuracy": 1.0}, reference=True)
    mine = VariantResult(name="int8-max", precision="int8", metrics={"accuracy": 0.70})
    flt = VariantResult(name="float", precision="float32", metrics={"accuracy": 1.0})
    sel = select_variant([flt, ref, mine], correct)
    assert sel.winner == "int8-max" and sel.outcome == "none within the margin"  # recommended, with a warning
    assert select_variant([ref], correct).winner is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"engine": {"runtime": "tensorrt"}, "quantization": {"compare": ["int8", "int8-dynamic"]}}, "int8-dynamic"),
        ({"engine": {"provider": "cuda"}, "references": ["ort-dynamic"]}, "references"),
        ({"engine": {"runtime": "tensorrt", "int8_graph": "fused"}}, "int8_graph"),
    ],
)
def test_engine_specific_choices_are_rejected_for_other_engines(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, patch: dict[str, Any], message: str) -> None:
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    for section, values in patch.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_references_default_to_the_cpu_engine_only(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    assert recipe_from_dict(data).reference_kinds == ["ort-float", "ort-dynamic", "ort-static"]
    data["references"] = []
    assert recipe_from_dict(data).reference_kinds == []
    data["references"] = None
    data["engine"]["provider"] = "cuda"
    assert recipe_from_dict(data).reference_kinds == []
