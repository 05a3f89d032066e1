"""SmoothQuant on the tiny BERT: factors, groups, float equivalence of the rewrite (<= 1e-4), reduced
activation ranges of the smoothed Linear inputs, exact restore, the per-channel statistics file, ONNX
export with the explicit input scale (per-layer fidelity), and why 1/s cannot go into BERT's LayerNorms."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows
from torch import nn

from quant_workbench.config.recipe import EngineSpec, ModelSpec, QuantSpec
from quant_workbench.core.comparator import cosine_rows
from quant_workbench.export.qdq import export_onnx, per_layer_fidelity
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate, prepare, set_scales
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import build_plan
from quant_workbench.quantize.smoothquant import (
    ChannelAmaxCollector,
    apply_smoothquant,
    float_mode,
    load_channel_amax,
    save_channel_amax,
    smooth_groups,
    smoothing_factors,
    smoothquant_applied,
)
from quant_workbench.runtime.onnxruntime import OrtEngine, optimized_op_counts

ENGINE = EngineSpec(provider="cpu", graph_optimization="all", threads=1)
TEXTS = [t for t, _ in make_rows()]
OUTLIER_CHANNELS = (3, 17)


@dataclass
class Smoothable:
    loaded: LoadedModel
    calibrators: dict[str, HistogramCalibrator]
    channels: dict[str, torch.Tensor]
    example: dict[str, torch.Tensor]

    def feed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(self.loaded.tokenizer, texts, TINY_SEQ, self.loaded.input_names))

    def loop(self, model: nn.Module) -> None:
        for start in range(0, 32, 16):
            model(**self.feed(TEXTS[start : start + 16]))

    def float_out(self, feed: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with float_mode(self.loaded.model), torch.no_grad():
            out: torch.Tensor = self.loaded.model(**(feed or self.example))
        return out


def _with_outliers(loaded: LoadedModel) -> None:
    """Give every LayerNorm output a few large channels, as trained BERTs have (random weights don't)."""
    with torch.no_grad():
        for name, mod in loaded.model.named_modules():
            if isinstance(mod, nn.LayerNorm):
                for c in OUTLIER_CHANNELS:
                    mod.weight[c] *= 40.0
                    mod.bias[c] *= 40.0
                del name


def _fresh(model_dir: Path) -> Smoothable:
    loaded = load_model(ModelSpec(source=str(model_dir), max_seq_length=TINY_SEQ))
    _with_outliers(loaded)
    plan = build_plan(loaded.model.hf, QuantSpec())
    prepare(loaded.model.hf, plan, per_channel_weights=True)
    s = Smoothable(loaded, {}, {}, to_torch(tokenize(loaded.tokenizer, TEXTS[200:216], TINY_SEQ, loaded.input_names)))
    with ChannelAmaxCollector(loaded.model) as col:
        s.calibrators = calibrate(loaded.model, s.loop)
    s.channels = col.amax
    return s


@pytest.fixture(scope="module")
def smoothable(tiny_bert_dir: Path) -> Smoothable:
    return _fresh(tiny_bert_dir)


# ---------------------------------------------------------------------------------------------
# factors and groups


def test_smoothing_factors_formula() -> None:
    act = torch.tensor([8.0, 1.0, 0.0, 4.0])
    w1 = torch.tensor([[2.0, -1.0, 3.0, 0.0], [0.5, 4.0, 1.0, 0.0]])
    w2 = torch.tensor([[-3.0, 0.25, 1.0, 0.0]])
    s = smoothing_factors(act, [w1, w2], alpha=0.5)
    # w max per input channel over both weights: [3, 4, 3, 0]; zero act or weight -> factor 1
    expected = torch.tensor([(8.0 / 3.0) ** 0.5, (1.0 / 4.0) ** 0.5, 1.0, 1.0])
    torch.testing.assert_close(s, expected)
    s75 = smoothing_factors(act, [w1, w2], alpha=0.75)
    torch.testing.assert_close(s75[0], torch.tensor(8.0**0.75 / 3.0**0.25))
    assert torch.equal(smoothing_factors(act, [w1], alpha=0.0)[:2], 1.0 / torch.tensor([2.0, 4.0]))


def test_groups_cover_qkv_ffn_in_and_attention_output(smoothable: Smoothable) -> None:
    groups = smooth_groups(smoothable.loaded.model)
    described = {g.linears: (g.how, g.fold_into) for g in groups}
    for i in range(2):
        layer = f"hf.encoder.layer.{i}"
        qkv = tuple(f"{layer}.attention.self.{p}" for p in ("query", "key", "value"))
        assert described[qkv] == ("input_scale", None)
        assert described[(f"{layer}.intermediate.dense",)] == ("input_scale", None)
        assert described[(f"{layer}.attention.output.dense",)] == ("fold", f"{layer}.attention.self.value")
        assert (f"{layer}.output.dense",) not in described  # fed by GELU: not smoothed
    assert [g.how for g in groups][:2] == ["fold", "fold"]  # folds first


def test_ffn_out_is_smoothed_only_when_asked_with_an_explicit_input_scale(smoothable: Smoothable) -> None:
    """smoothquant.ffn_out (issue 17): FFN-out's input is the GELU output, nothing to fold 1/s into."""
    model = smoothable.loaded.model
    described = {g.linears: (g.how, g.fold_into) for g in smooth_groups(model, ffn_out=True)}
    plain = {g.linears for g in smooth_groups(model)}
    for i in range(2):
        assert described[(f"hf.encoder.layer.{i}.output.dense",)] == ("input_scale", None)
    assert set(described) - plain == {(f"hf.encoder.layer.{i}.output.dense",) for i in range(2)}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = smoothable.float_out()
    with smoothquant_applied(model, smoothable.channels, 0.95, ffn_out=True) as state:
        assert (smoothable.float_out() - before).abs().max() <= 1e-4  # still the same float model
        assert state.summary()["explicit_input_scales"] == 6  # q/k/v, ffn-in and ffn-out of both layers
        ffn_out = model.get_submodule("hf.encoder.layer.1.output.dense")
        assert isinstance(ffn_out, QuantLinear) and ffn_out.smooth_scale is not None
        smoothed_cal = calibrate(model, smoothable.loop)
        q = "hf.encoder.layer.1.output.dense.input_quantizer"
        assert smoothed_cal[q].amax_max < smoothable.calibrators[q].amax_max
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(m.smooth_scale is None for m in model.modules() if isinstance(m, QuantLinear))


def test_ffn_out_key_stays_out_of_recipes_that_do_not_set_it() -> None:
    from quant_workbench.config.recipe import SmoothQuantSpec

    assert SmoothQuantSpec(alpha=0.5).model_dump() == {"alpha": 0.5}  # run ids of recipes written before
    assert SmoothQuantSpec(alpha=0.95, ffn_out=True).model_dump() == {"alpha": 0.95, "ffn_out": True}


# ---------------------------------------------------------------------------------------------
# the rewrite


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_float_outputs_unchanged_and_restore_is_exact(smoothable: Smoothable, alpha: float) -> None:
    model = smoothable.loaded.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = smoothable.float_out()
    with smoothquant_applied(model, smoothable.channels, alpha) as state:
        after = smoothable.float_out()
        assert (after - before).abs().max() <= 1e-4
        assert state.summary()["smoothed_linears"] == 10  # 2 x (q, k, v, ffn-in, attention output)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, params[n])]
        assert any("query.weight" in n for n in changed) and any("attention.output.dense.weight" in n for n in changed)
        assert not any("LayerNorm" in n for n in changed)
        smoothed = [m for m in model.modules() if isinstance(m, QuantLinear) and m.smooth_scale is not None]
        assert len(smoothed) == 8  # q, k, v and ffn-in of both layers carry the explicit 1/s
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert all(m.smooth_scale is None for m in model.modules() if isinstance(m, QuantLinear))


def test_smoothing_reduces_the_activation_range_of_smoothed_inputs(smoothable: Smoothable) -> None:
    model = smoothable.loaded.model
    with smoothquant_applied(model, smoothable.channels, 0.5) as state:
        smoothed_cal = calibrate(model, smoothable.loop)
        names = [lin for g in state.groups for lin in g.linears]
    for lin in names:
        q = f"{lin}.input_quantizer"
        before, after = smoothable.calibrators[q].amax_max, smoothed_cal[q].amax_max
        assert after < before, (lin, before, after)
    # the LayerNorm-fed inputs carry the injected 40x outlier channels: their range shrinks a lot
    qkv = "hf.encoder.layer.1.attention.self.query.input_quantizer"
    assert smoothed_cal[qkv].amax_max < smoothable.calibrators[qkv].amax_max / 3


def test_folding_into_the_layernorm_would_change_post_ln_bert(smoothable: Smoothable) -> None:
    """Why Q/K/V and FFN-in get an explicit input scale: in post-LN BERT the LayerNorm output is also
    the residual stream, so dividing the LayerNorm's weight and bias by s changes the model."""
    model = smoothable.loaded.model
    before = smoothable.float_out()
    ln = "hf.encoder.layer.0.output.LayerNorm"
    ln_weight, ln_bias = model.get_parameter(f"{ln}.weight"), model.get_parameter(f"{ln}.bias")
    group = ["hf.encoder.layer.1.attention.self." + p for p in ("query", "key", "value")]
    weights: list[torch.Tensor] = [model.get_parameter(f"{n}.weight") for n in group]
    s = smoothing_factors(smoothable.channels[group[0]], weights, 0.5)
    saved = [t.detach().clone() for t in (ln_weight, ln_bias, *weights)]
    try:
        with torch.no_grad():
            ln_weight.div_(s)
            ln_bias.div_(s)
            for w in weights:
                w.mul_(s[None, :])
        assert (smoothable.float_out() - before).abs().max() > 1e-2
    finally:
        with torch.no_grad():
            for t, v in zip((ln_weight, ln_bias, *weights), saved, strict=True):
                t.copy_(v)
    assert (smoothable.float_out() - before).abs().max() == 0


def test_missing_channel_statistics_raise_and_leave_the_model_unchanged(smoothable: Smoothable) -> None:
    model = smoothable.loaded.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    partial = {k: v for k, v in smoothable.channels.items() if "layer.1.intermediate" not in k}
    with pytest.raises(KeyError, match="layer.1.intermediate"):
        apply_smoothquant(model, partial, 0.5)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


# ---------------------------------------------------------------------------------------------
# statistics file


def test_channel_amax_file_round_trip_is_deterministic(smoothable: Smoothable, tmp_path: Path) -> None:
    a, b = tmp_path / "a.channels.json", tmp_path / "b.channels.json"
    save_channel_amax(a, "k1", smoothable.channels)
    save_channel_amax(b, "k1", dict(reversed(list(smoothable.channels.items()))))
    assert a.read_bytes() == b.read_bytes()
    back = load_channel_amax(a, "k1")
    assert back is not None and set(back) == set(smoothable.channels)
    for n, v in smoothable.channels.items():
        assert torch.equal(back[n], v)
    assert load_channel_amax(a, "other key") is None
    assert load_channel_amax(tmp_path / "missing.json", "k1") is None
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    assert load_channel_amax(tmp_path / "bad.json", "k1") is None


# ---------------------------------------------------------------------------------------------
# export


def test_smoothed_int8_onnx_matches_fake_quant_per_layer_and_end_to_end(tiny_bert_dir: Path, tmp_path: Path) -> None:
    s = _fresh(tiny_bert_dir)
    model = s.loaded.model
    with smoothquant_applied(model, s.channels, 0.5):
        cal = calibrate(model, s.loop)
        set_scales(model, cal, "max")
        path = export_onnx(model, tmp_path / "int8-sq.qdq.onnx", s.example, s.loaded.input_names, s.loaded.output_name, 18)
        layers = per_layer_fidelity(path, model, s.example, lambda b: OrtEngine(b, ENGINE, "layer"))
        assert len(layers) == 12
        assert all(x.mean_cosine >= 0.9999 for x in layers.values()), layers
        with torch.no_grad():
            ref = model(**s.example).numpy()
    with OrtEngine(path, ENGINE, "sq") as eng:
        got = eng({k: v.numpy() for k, v in s.example.items()})
    assert cosine_rows(got, ref).min() > 0.999
    graph = __import__("onnx").load(str(path))
    assert any(i.name.endswith(".smooth_scale") for i in graph.graph.initializer)
    assert optimized_op_counts(path, ENGINE)["integer_matmuls"] == 12  # the Mul does not block INT8 fusion


def test_execute_compares_int8_smoothquant_and_fp8_in_one_report(make_recipe: Any) -> None:
    from quant_workbench.config.recipe import recipe_from_dict
    from quant_workbench.pipeline.run import execute

    d = make_recipe(methods=["max"])
    d["quantization"] = {**d["quantization"], "compare": ["int8", "int8-smoothquant", "fp8"], "smoothquant": {"alpha": [0.5, 0.75]}}
    d["export"] = {**d["export"], "opset": 19}
    d["benchmark"] = {**d["benchmark"], "enabled": False}
    result = execute(recipe_from_dict(d), progress=False, say=lambda _: None)
    names = [v.name for v in result.variants if not v.reference]
    assert names == ["float", "int8-max", "int8-sq0.5-max", "int8-sq0.75-max", "fp8-max"]
    graphs = {v.name: v.fidelity["engine_graph"]["graph"] for v in result.variants[1:5]}
    # SmoothQuant's rewritten weights get their own fused graph; FP8 has no ONNX Runtime GEMM and runs as Q/DQ
    assert graphs == {"int8-max": "fused-int8", "int8-sq0.5-max": "fused-int8", "int8-sq0.75-max": "fused-int8", "fp8-max": "qdq"}, graphs
    assert all(v.status == "ok" for v in result.variants), [(v.name, v.error) for v in result.variants]
    by = {v.name: v for v in result.variants}
    assert by["fp8-max"].precision == "fp8" and by["int8-sq0.5-max"].precision == "int8"
    assert by["fp8-max"].engine["integer_matmuls"] == 0
    # every Linear on an integer kernel either way; SmoothQuant's per-channel input scale (a Mul between the
    # LayerNorm and Q/K/V) stops ONNX Runtime's Attention fusion, and the report says so
    assert by["int8-max"].engine["integer_ops"] == {"MatMulIntegerToFloat": 6, "QAttention": 2}
    assert by["int8-sq0.5-max"].engine["integer_ops"] == {"MatMulIntegerToFloat": 12}
    assert by["int8-sq0.5-max"].fidelity["engine_graph"]["fusions_lost_vs_float"] == {"EmbedLayerNormalization": 1, "Attention": 2}
    sq = by["int8-sq0.5-max"].fidelity["smoothquant"]
    assert sq["float_equivalence"]["passed"] and sq["float_equivalence"]["float_max_abs_diff"] <= 1e-4
    assert "int8-sq0.75" in result.calibration["families"]
    assert by["fp8-max"].fidelity["graph"]["zero_point_types"] == ["FLOAT8E4M3FN"]
    run_dir = Path(d["output_dir"]) / d["name"] / result.run_id
    report = (run_dir / "report.md").read_text()
    assert "fp8-max" in report and "int8-sq0.5-max" in report
    # a second run resumes: same statistics (base and smoothed) come from the cache
    again = execute(recipe_from_dict(d), progress=False, say=lambda _: None)
    assert again.calibration["cache_hit"] is True
    assert again.calibration["families"]["int8-sq0.5"]["smoothquant"]["calibration_cache_hit"] is True
    # FP8 and SmoothQuant variants deploy like INT8 ones: validated Triton configs for the same ONNX files
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient) is not installed")
    from quant_workbench.config.recipe import DeploySpec
    from quant_workbench.deploy import deploy_run

    spec = DeploySpec.model_validate({"targets": ["python-onnxruntime", "onnxruntime"], "variants": ["fp8-max", "int8-sq0.5-max"], "instance_kind": "cpu"})
    repo = deploy_run(run_dir, run_dir / "triton-formats", recipe=recipe_from_dict({**d, "deploy": spec.model_dump()}), say=lambda _: None)
    assert {m.name for m in repo.models} == {"fp8-max-cpu", "fp8-max-ort", "int8-sq0.5-max-cpu", "int8-sq0.5-max-ort"}
    served = run_dir / "triton-formats" / "fp8-max-cpu" / "1" / "model.onnx"
    assert served.read_bytes() == (run_dir / "models" / "fp8-max.qdq.onnx").read_bytes()
