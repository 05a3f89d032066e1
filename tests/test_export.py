"""Q/DQ ONNX export of the tiny random BERT: graph layout, fidelity against fake-quant PyTorch (per layer
and end to end), ONNX Runtime's integer kernels, dynamic shapes, float export, and determinism."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tiny_fixtures import TINY_SEQ, make_rows

from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec
from quant_workbench.config.vocabulary import HF_PREFIX
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.export.qdq import (
    export_onnx,
    find_linears,
    finish_graph,
    per_layer_fidelity,
    qdq_summary,
)
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate, prepare, quantizers, set_scales
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.observers import HistogramCalibrator, save_stats
from quant_workbench.quantize.plan import QuantPlan, build_plan
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts

METHODS = ["max", "percentile", "entropy", "mse"]
N_LINEARS = 12  # 2 layers x (query, key, value, attention.output.dense, intermediate.dense, output.dense)
N_ATTENTION_MATMULS = 4
ENGINE = EngineSpec(provider="cpu", graph_optimization="all", threads=1)
TEXTS = [t for t, _ in make_rows()]


@dataclass
class Prepared:
    loaded: LoadedModel
    plan: QuantPlan
    calibrators: dict[str, HistogramCalibrator]
    example: dict[str, torch.Tensor]
    exports: dict[str, Path] = field(default_factory=dict)

    def feed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(self.loaded.tokenizer, texts, TINY_SEQ, self.loaded.input_names))

    def fake_quant(self, feed: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return self.loaded.model(**feed).numpy()


def _load(model_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(source=str(model_dir), max_seq_length=TINY_SEQ))


def fresh(model_dir: Path, *, attn_and_residual: bool = False) -> Prepared:
    """A new model load, plan, prepare and one calibration pass (32 texts, batch 16)."""
    loaded = _load(model_dir)
    spec = QuantSpec(quantize_attention_matmuls=attn_and_residual, quantize_residual_adds=attn_and_residual)
    plan = build_plan(loaded.model.hf, spec)
    prepare(loaded.model.hf, plan, per_channel_weights=True)

    def feed(texts: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(loaded.tokenizer, texts, TINY_SEQ, loaded.input_names))

    def loop(model: torch.nn.Module) -> None:
        for start in range(0, 32, 16):
            model(**feed(TEXTS[start : start + 16]))

    calibrators = calibrate(loaded.model, loop, num_bins=2048)
    return Prepared(loaded, plan, calibrators, feed(TEXTS[200:208]))


def export(p: Prepared, path: Path) -> Path:
    return export_onnx(p.loaded.model, path, p.example, p.loaded.input_names, p.loaded.output_name, 18)


@pytest.fixture(scope="module")
def prepared(tiny_bert_dir: Path) -> Prepared:
    return fresh(tiny_bert_dir)


@pytest.fixture(scope="module")
def qdq(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`qdq(method)`: set the method's scales on the shared prepared model; export once per method."""
    folder = tmp_path_factory.mktemp("qdq")

    def get(method: str) -> Path:
        set_scales(prepared.loaded.model, prepared.calibrators, method)
        if method not in prepared.exports:
            prepared.exports[method] = export(prepared, folder / f"int8-{method}.qdq.onnx")
        return prepared.exports[method]

    return get


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _dq_source(tensor: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The DequantizeLinear feeding `tensor`, directly or through one Transpose."""
    node = producers.get(tensor)
    if node is not None and node.op_type == "Transpose":
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def _quantized_linears(p: Prepared) -> dict[str, QuantLinear]:
    out = {}
    for name, mod in p.loaded.model.named_modules():
        if isinstance(mod, QuantLinear) and mod.input_quantizer.enabled:
            out[name[len(HF_PREFIX) :]] = mod
    return out


# ---------------------------------------------------------------------------------------------
# float export


def test_float_onnx_matches_pytorch(tiny_bert_dir: Path, tmp_path: Path) -> None:
    loaded = _load(tiny_bert_dir)
    p = Prepared(loaded, build_plan(loaded.model.hf, QuantSpec()), {}, {})
    p.example = p.feed(TEXTS[:8])
    path = export(p, tmp_path / "float.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert not [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    with OrtEngine(path, ENGINE, "float") as eng:
        for texts in (TEXTS[:8], TEXTS[50:53]):
            feed = p.feed(texts)
            got = eng({k: v.numpy() for k, v in feed.items()})
            ref = p.fake_quant(feed)
            assert got.shape == ref.shape == (len(texts), 32)
            assert float(np.abs(got - ref).max()) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Q/DQ graph layout (every calibration method)


def test_prepare_swaps_in_quantized_linears(prepared: Prepared) -> None:
    linears = _quantized_linears(prepared)
    assert set(linears) == {p.module for p in prepared.plan.enabled}
    assert len(linears) == N_LINEARS
    # disabled candidates get modules too (so calibration covers them), but their quantizers are off
    pooler = prepared.loaded.model.hf.get_submodule("pooler.dense")
    assert isinstance(pooler, QuantLinear) and not pooler.input_quantizer.enabled
    # one calibrator per activation quantizer of every candidate, enabled or not
    assert set(prepared.calibrators) == {n for n in quantizers(prepared.loaded.model) if not n.endswith(".weight_quantizer")}


@pytest.mark.parametrize("method", METHODS)
def test_set_scales_gives_positive_finite_scales(prepared: Prepared, method: str) -> None:
    amax = set_scales(prepared.loaded.model, prepared.calibrators, method)
    assert len(amax) == N_LINEARS  # activation quantizers of the enabled points
    assert all(np.isfinite(v) and v > 0 for v in amax.values())
    maxes = set_scales(prepared.loaded.model, prepared.calibrators, "max")
    assert all(amax[n] <= maxes[n] * (1 + 1e-6) for n in amax)  # no method exceeds the observed max


@pytest.mark.parametrize("method", METHODS)
def test_qdq_onnx_passes_full_checker(qdq: Callable[[str], Path], method: str) -> None:
    onnx.checker.check_model(str(qdq(method)), full_check=True)


@pytest.mark.parametrize("method", METHODS)
def test_zero_points_are_int8_zero(qdq: Callable[[str], Path], method: str) -> None:
    model = onnx.load(str(qdq(method)))
    inits = _inits(model)
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qnodes
    for node in qnodes:
        assert len(node.input) == 3, node.name
        zp = inits[node.input[2]]
        assert zp.data_type == onnx.TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zp).any(), node.name


@pytest.mark.parametrize("method", METHODS)
def test_weight_qdq_is_per_channel_axis0_on_named_initializers(prepared: Prepared, qdq: Callable[[str], Path], method: str) -> None:
    model = onnx.load(str(qdq(method)))
    inits = _inits(model)
    found = find_linears(model)
    linears = _quantized_linears(prepared)
    assert set(found) == set(linears)
    for module, nodes in found.items():
        q, dq = nodes.weight_qdq
        assert (q.op_type, dq.op_type) == ("QuantizeLinear", "DequantizeLinear")
        assert q.input[0] == f"{HF_PREFIX}{module}.weight" and q.input[0] in inits
        for node in (q, dq):
            assert next(a.i for a in node.attribute if a.name == "axis") == 0
        scale = numpy_helper.to_array(inits[q.input[1]])
        assert scale.shape == (linears[module].out_features,)
        np.testing.assert_allclose(scale, linears[module].weight_quantizer._scale.numpy(), rtol=0, atol=0)
        # the activation side is per-tensor, with this layer's own input scale
        aq, adq = nodes.activation_qdq
        assert (aq.op_type, adq.op_type) == ("QuantizeLinear", "DequantizeLinear")
        act_scale = numpy_helper.to_array(inits[aq.input[1]])
        assert act_scale.shape == ()
        assert float(act_scale) == float(linears[module].input_quantizer._scale)
    summary = qdq_summary(qdq(method))
    assert summary["zero_point_types"] == ["INT8"]
    assert summary["per_channel_axes"] == [0]
    assert summary["opset"] == 18
    assert summary["quantize_linear"] == summary["dequantize_linear"] == 2 * N_LINEARS


@pytest.mark.parametrize("method", METHODS)
def test_every_quantized_matmul_has_dq_on_both_inputs(qdq: Callable[[str], Path], method: str) -> None:
    model = onnx.load(str(qdq(method)))
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers[x] = consumers.get(x, 0) + 1
    quantized = 0
    for mm in (n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")):
        sources = [_dq_source(x, producers) for x in mm.input[:2]]
        if not any(sources):
            continue
        quantized += 1
        assert all(sources), f"{mm.name} has a DQ on only one input"
        # activation DQ feeds the MatMul directly; the weight DQ goes through a Transpose
        assert producers[mm.input[0]].op_type == "DequantizeLinear"
        assert producers[mm.input[1]].op_type == "Transpose"
        # every consumer has its own (unshared) Q/DQ pair, which ONNX Runtime's QDQ fusion needs
        for dq in sources:
            assert dq is not None and consumers[dq.output[0]] == 1
    assert quantized == N_LINEARS


@pytest.mark.parametrize("method", METHODS)
def test_per_layer_fidelity_fake_quant_vs_onnx(prepared: Prepared, qdq: Callable[[str], Path], method: str) -> None:
    path = qdq(method)
    layers = per_layer_fidelity(path, prepared.loaded.model, prepared.example, lambda b: OrtEngine(b, ENGINE, "layer"))
    assert set(layers) == set(_quantized_linears(prepared))
    for module, x in layers.items():
        assert x.mean_cosine > 0.9999, (module, x.mean_cosine)
        assert x.passed and x.samples == 1


@pytest.mark.parametrize("method", METHODS)
def test_end_to_end_cosine_ort_vs_fake_quant(prepared: Prepared, qdq: Callable[[str], Path], method: str) -> None:
    path = qdq(method)
    with OrtEngine(path, ENGINE, "qdq") as eng:
        got = eng({k: v.numpy() for k, v in prepared.example.items()})
    cos = cosine_rows(got, prepared.fake_quant(prepared.example))
    assert cos.min() > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_ort_fuses_every_quantized_linear_into_an_integer_matmul(qdq: Callable[[str], Path], method: str) -> None:
    counts = optimized_op_counts(qdq(method), ENGINE)
    assert counts["integer_matmuls"] == N_LINEARS
    # only the two attention matmuls per layer stay float
    assert counts["float_matmuls"] == N_ATTENTION_MATMULS
    assert counts["remaining_dequantize_linear"] == 0


def test_dynamic_batch_and_sequence(prepared: Prepared, qdq: Callable[[str], Path]) -> None:
    path = qdq("entropy")
    model = onnx.load(str(path))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert all(d.dim_param and not d.dim_value for d in dims), inp.name
    one = prepared.feed(TEXTS[10:11])
    five = prepared.feed(TEXTS[20:25])
    # pad the 5-row batch with [PAD] (id 0, mask 0) to a length the export example never had
    five = {k: torch.nn.functional.pad(v, (0, 30 - v.shape[1])) for k, v in five.items()}
    shapes = []
    with OrtEngine(path, ENGINE, "qdq") as eng:
        for feed in (one, five):
            shapes.append(tuple(feed["input_ids"].shape))
            got = eng({k: v.numpy() for k, v in feed.items()})
            assert got.shape == (shapes[-1][0], 32)
            assert cosine_rows(got, prepared.fake_quant(feed)).min() > 0.99
    assert shapes[0] != shapes[1] and shapes[0][0] == 1 and shapes[1] == (5, 30)


def test_qdq_nodes_are_named_after_quantizers(prepared: Prepared, qdq: Callable[[str], Path]) -> None:
    """Nodes outside Q/K/V (whose shared input scale the exporter de-duplicates) carry their quantizer's name."""
    model = onnx.load(str(qdq("max")))
    for module, nodes in find_linears(model).items():
        q, dq = nodes.weight_qdq
        assert q.name == f"{module}.weight_quantizer/Q" and dq.name == f"{module}.weight_quantizer/DQ"


# ---------------------------------------------------------------------------------------------
# determinism


def _without_node_names(path: Path) -> bytes:
    model = onnx.load(str(path))
    for n in model.graph.node:
        n.name = ""
    return model.SerializeToString()


def _scales(p: Prepared) -> dict[str, list[float]]:
    return {n: q._scale.reshape(-1).tolist() for n, q in quantizers(p.loaded.model).items() if q.enabled}


@pytest.fixture(scope="module")
def fresh_pairs(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], dict[str, Any]]:
    """Two independent runs (load, calibrate, scales, export into different files) per configuration."""
    cache: dict[bool, dict[str, Any]] = {}
    folder = tmp_path_factory.mktemp("determinism")

    def get(attn_and_residual: bool) -> dict[str, Any]:
        if attn_and_residual not in cache:
            runs = []
            for i in range(2):
                p = fresh(tiny_bert_dir, attn_and_residual=attn_and_residual)
                amax = set_scales(p.loaded.model, p.calibrators, "entropy")
                stats = folder / f"stats-{attn_and_residual}-{i}.npz"
                save_stats(stats, p.calibrators, {"run": "x"})
                path = export(p, folder / f"run{i}-{attn_and_residual}" / "model.qdq.onnx")
                runs.append({"prepared": p, "amax": amax, "scales": _scales(p), "path": path, "stats": stats})
            cache[attn_and_residual] = {"runs": runs}
        return cache[attn_and_residual]

    return get


CONFIGS = pytest.mark.parametrize("attn_and_residual", [False, True], ids=["linears", "attention+residual"])


@CONFIGS
def test_fresh_runs_give_identical_scales_and_graphs(fresh_pairs: Callable[[bool], dict[str, Any]], attn_and_residual: bool) -> None:
    a, b = fresh_pairs(attn_and_residual)["runs"]
    assert a["amax"] == b["amax"]
    assert a["scales"] == b["scales"]
    assert a["stats"].read_bytes() == b["stats"].read_bytes()
    assert a["path"] != b["path"]
    assert _without_node_names(a["path"]) == _without_node_names(b["path"])


@CONFIGS
def test_fresh_runs_give_identical_onnx_bytes(fresh_pairs: Callable[[bool], dict[str, Any]], attn_and_residual: bool) -> None:
    a, b = fresh_pairs(attn_and_residual)["runs"]
    assert hashlib.sha256(a["path"].read_bytes()).hexdigest() == hashlib.sha256(b["path"].read_bytes()).hexdigest()


@CONFIGS
def test_onnx_carries_no_paths_of_the_machine_that_built_it(fresh_pairs: Callable[[bool], dict[str, Any]], attn_and_residual: bool) -> None:
    """Byte-identical across installs: the exporter's per-node stack traces (absolute paths) are dropped."""
    import site

    import quant_workbench

    data = fresh_pairs(attn_and_residual)["runs"][0]["path"].read_bytes()
    assert b"pkg.torch.onnx.stack_trace" not in data
    roots = [Path(quant_workbench.__file__).resolve().parent.parent, *map(Path, site.getsitepackages())]
    for root in roots:
        assert str(root).encode() not in data, root


def test_finish_graph_names_every_qdq_after_its_quantizer_deterministically(fresh_pairs: Callable[[bool], dict[str, Any]]) -> None:
    path = fresh_pairs(True)["runs"][0]["path"]
    base = onnx.load(str(path))
    outputs = set()
    for _ in range(6):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        model = finish_graph(model)
        outputs.add(model.SerializeToString())
        qdq_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert not [n.name for n in qdq_nodes if n.name.startswith("node_")]
        for module, nodes in find_linears(model).items():
            assert [n.name for n in nodes.activation_qdq] == [f"{module}.input_quantizer/Q", f"{module}.input_quantizer/DQ"]
            assert [n.name for n in nodes.weight_qdq] == [f"{module}.weight_quantizer/Q", f"{module}.weight_quantizer/DQ"]
    assert len(outputs) == 1


def test_attention_and_residual_quantization_end_to_end(fresh_pairs: Callable[[bool], dict[str, Any]]) -> None:
    run = fresh_pairs(True)["runs"][0]
    p: Prepared = run["prepared"]
    path: Path = run["path"]
    enabled = {q.module for q in p.plan.enabled}
    assert len(enabled) == N_LINEARS + N_ATTENTION_MATMULS + 4  # + 4 residual adds
    set_scales(p.loaded.model, p.calibrators, "entropy")
    onnx.checker.check_model(str(path), full_check=True)
    summary = qdq_summary(path)
    assert summary["zero_point_types"] == ["INT8"]
    # two activation quantizers per attention matmul and residual add on top of the linears' pairs
    assert summary["quantize_linear"] == 2 * N_LINEARS + 2 * (N_ATTENTION_MATMULS + 4)
    with OrtEngine(path, ENGINE, "qdq") as eng:
        got = eng({k: v.numpy() for k, v in p.example.items()})
    assert cosine_rows(got, p.fake_quant(p.example)).min() > 0.99
    layers = per_layer_fidelity(path, p.loaded.model, p.example, lambda b: OrtEngine(b, ENGINE, "layer"))
    assert len(layers) == N_LINEARS and all(x.mean_cosine > 0.9999 for x in layers.values())
    counts = optimized_op_counts(path, ENGINE)
    assert counts["integer_matmuls"] == N_LINEARS + N_ATTENTION_MATMULS
    assert counts["float_matmuls"] == 0


@pytest.mark.parametrize(
    ("onnx_vs_fake", "fake_vs_float", "passes"),
    [
        (0.9874, 0.9065, True),  # fully quantized QAT-recipe model, ORT 1.30 on an H100 host's CPU
        (0.9950, 0.9990, True),  # a light quantization: the fixed 0.99 floor applies
        (0.9850, 0.9950, False),  # too far apart for so little quantization noise
        (0.9000, 0.9065, False),  # even noisy models must agree with their own fake quant
    ],
)
def test_end_to_end_allowance_scales_with_quantization_noise(onnx_vs_fake: float, fake_vs_float: float, passes: bool) -> None:
    from quant_workbench.export.qdq import end_to_end_allowance

    assert (1.0 - onnx_vs_fake <= end_to_end_allowance(1.0 - fake_vs_float, 0.99)) is passes
