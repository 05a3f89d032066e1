"""Layer selection on a tiny random BERT: exact names, class names, regexes, ignore, op-kind switches, errors."""

from __future__ import annotations

from typing import Any

import pytest
from tiny_fixtures import tiny_bert_config
from torch import nn

from quant_workbench.config.recipe import QuantSpec
from quant_workbench.core.errors import SelectionError
from quant_workbench.quantize.plan import QuantPlan, build_plan, candidate_points, entry_matches

LINEARS_PER_LAYER = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"]


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    from transformers import BertModel

    return BertModel(tiny_bert_config()).eval()


def _plan(model: nn.Module, **kw: Any) -> QuantPlan:
    return build_plan(model, QuantSpec(**kw))


def _enabled(plan: QuantPlan) -> set[str]:
    return {p.module for p in plan.enabled}


def _layer_linears(i: int) -> set[str]:
    return {f"encoder.layer.{i}.{n}" for n in LINEARS_PER_LAYER}


def test_candidates_cover_linears_attention_and_residuals(bert: nn.Module) -> None:
    cands = candidate_points(bert)
    kinds: dict[str, list[str]] = {}
    for name, kind, _ in cands:
        kinds.setdefault(kind, []).append(name)
    assert set(kinds["linear"]) == _layer_linears(0) | _layer_linears(1) | {"pooler.dense"}
    assert set(kinds["attention_matmul"]) == {f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("qk_matmul", "pv_matmul")}
    assert set(kinds["residual_add"]) == {f"encoder.layer.{i}.{b}.residual_add" for i in (0, 1) for b in ("attention.output", "output")}
    assert len({c[0] for c in cands}) == len(cands)


def test_default_targets_every_encoder_linear_and_not_the_pooler(bert: nn.Module) -> None:
    plan = _plan(bert)
    assert _enabled(plan) == _layer_linears(0) | _layer_linears(1)
    pooler = next(p for p in plan.points if p.module == "pooler.dense")
    assert not pooler.enabled and "not matched by any target" in pooler.reason


def test_exact_name_matches_module_and_descendants(bert: nn.Module) -> None:
    assert _enabled(_plan(bert, targets=["encoder.layer.1"])) == _layer_linears(1)
    assert _enabled(_plan(bert, targets=["encoder.layer.0.intermediate.dense"])) == {"encoder.layer.0.intermediate.dense"}
    # a name is matched as a whole path component, not as a string prefix
    assert not entry_matches("encoder.layer.1", "encoder.layer.10.output.dense", {})


def test_class_name_matches_modules_of_that_class_and_descendants(bert: nn.Module) -> None:
    assert _enabled(_plan(bert, targets=["BertIntermediate"])) == {"encoder.layer.0.intermediate.dense", "encoder.layer.1.intermediate.dense"}
    assert _enabled(_plan(bert, targets=["BertSelfAttention"])) == {
        f"encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "key", "value")
    }
    # "Linear" is the class of every nn.Linear, the pooler's included
    assert _enabled(_plan(bert, targets=["Linear"])) == _layer_linears(0) | _layer_linears(1) | {"pooler.dense"}


def test_regex_full_matches_names(bert: nn.Module) -> None:
    got = _enabled(_plan(bert, targets=[r"re:encoder\.layer\.\d+\.attention\.self\.(query|key)"]))
    assert got == {f"encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "key")}
    # full match: a regex that only matches a prefix selects nothing of that name
    assert _enabled(_plan(bert, targets=[r"re:.*\.dense"])) == {
        f"encoder.layer.{i}.{n}" for i in (0, 1) for n in ("attention.output.dense", "intermediate.dense", "output.dense")
    } | {"pooler.dense"}


def test_first_matching_target_is_the_reason(bert: nn.Module) -> None:
    plan = _plan(bert, targets=["encoder.layer.0", "Linear"])
    reasons = {p.module: p.reason for p in plan.points}
    assert reasons["encoder.layer.0.output.dense"] == "targeted by 'encoder.layer.0'"
    assert reasons["encoder.layer.1.output.dense"] == "targeted by 'Linear'"


def test_ignore_beats_target(bert: nn.Module) -> None:
    plan = _plan(bert, targets=["Linear"], ignore=["encoder.layer.1", r"re:.*\.intermediate\.dense", "pooler"])
    assert _enabled(plan) == _layer_linears(0) - {"encoder.layer.0.intermediate.dense"}
    reasons = {p.module: p.reason for p in plan.points}
    assert reasons["encoder.layer.1.attention.self.query"] == "ignored by 'encoder.layer.1'"
    assert reasons["encoder.layer.0.intermediate.dense"] == "ignored by 're:.*\\.intermediate\\.dense'"
    assert reasons["pooler.dense"] == "ignored by 'pooler'"


def test_attention_matmul_switch(bert: nn.Module) -> None:
    attn = {f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("qk_matmul", "pv_matmul")}
    off = _plan(bert)
    assert not (attn & _enabled(off))
    assert all("quantize_attention_matmuls=false" in p.reason for p in off.points if p.module in attn)
    on = _plan(bert, quantize_attention_matmuls=True)
    assert attn <= _enabled(on)
    # the switch only unlocks them: targets and ignore still apply
    only0 = _plan(bert, quantize_attention_matmuls=True, ignore=["encoder.layer.1"])
    assert {m for m in _enabled(only0) if m in attn} == {m for m in attn if m.startswith("encoder.layer.0.")}
    assert all(p.kind == "attention_matmul" and p.op_class == "QuantMatMul" for p in on.points if p.module in attn)


def test_residual_add_switch(bert: nn.Module) -> None:
    adds = {f"encoder.layer.{i}.{b}.residual_add" for i in (0, 1) for b in ("attention.output", "output")}
    off = _plan(bert)
    assert not (adds & _enabled(off))
    assert all("quantize_residual_adds=false" in p.reason for p in off.points if p.module in adds)
    on = _plan(bert, quantize_residual_adds=True)
    assert adds <= _enabled(on)
    assert not ({p.module for p in on.enabled} & {f"encoder.layer.{i}.attention.self.qk_matmul" for i in (0, 1)})


def test_switch_does_not_override_ignore(bert: nn.Module) -> None:
    plan = _plan(bert, quantize_residual_adds=True, ignore=["re:.*residual_add"])
    assert not any(p.kind == "residual_add" for p in plan.enabled)
    assert {p.reason for p in plan.points if p.kind == "residual_add"} == {"ignored by 're:.*residual_add'"}


@pytest.mark.parametrize(
    ("field", "entry", "closest"),
    [
        ("targets", "encoder.layer.9", "encoder.layer.1"),
        ("targets", "BertIntermidiate", "BertIntermediate"),
        ("ignore", "encoder.layer.0.attention.self.quary", "encoder.layer.0.attention.self.query"),
        ("ignore", r"re:encoder\.layers\.\d+", "encoder.layer"),
    ],
)
def test_unmatched_entry_lists_closest_names(bert: nn.Module, field: str, entry: str, closest: str) -> None:
    kw: dict[str, Any] = {field: [entry]}
    with pytest.raises(SelectionError) as info:
        _plan(bert, **kw)
    err = info.value
    assert f"quantization.{field} entry '{entry}' matches no module" in err.message
    assert err.hint is not None and "closest module or class names:" in err.hint
    assert closest in err.hint.split("closest module or class names:", 1)[1]
    # --dry-run fails on the same entry, so the hint names quantizable ops itself (issue 20, finding 8)
    assert "--dry-run" not in err.hint and "quantizable ops are named like encoder.layer.0.attention.self.query" in err.hint


def test_entry_naming_a_virtual_point_is_valid(bert: nn.Module) -> None:
    plan = _plan(bert, quantize_attention_matmuls=True, targets=["encoder.layer.0.attention.self.qk_matmul"])
    assert _enabled(plan) == {"encoder.layer.0.attention.self.qk_matmul"}


def test_empty_selection_is_an_error(bert: nn.Module) -> None:
    with pytest.raises(SelectionError, match="quantizes nothing"):
        _plan(bert, ignore=["encoder"])
    with pytest.raises(SelectionError, match="quantizes nothing"):
        # only attention matmuls targeted, but their switch is off
        _plan(bert, targets=[r"re:.*_matmul"])


def test_describe_shows_every_quantizer(bert: nn.Module) -> None:
    plan = _plan(bert, ignore=["encoder.layer.1.output"])
    text = plan.describe()
    lines = text.splitlines()
    for point in plan.points:
        for qn in point.quantizer_names:
            line = next(ln for ln in lines if f" {qn} " in ln + " ")
            assert ("INT8" if point.enabled else "float") in line.split()[0]
            assert point.reason in line
    assert len(lines) == 2 * len(plan.points) + 1
    n_on = len(plan.enabled)
    assert lines[-1].strip() == f"-> {n_on} of {len(plan.points)} quantizable ops quantized ({2 * n_on} quantizers enabled)"
    assert any("encoder.layer.1.output.dense.weight_quantizer" in ln and "ignored by 'encoder.layer.1.output'" in ln for ln in lines)


def test_quantizer_names_and_layout(bert: nn.Module) -> None:
    plan = _plan(bert)
    q = next(p for p in plan.points if p.module == "encoder.layer.0.attention.self.query")
    assert q.quantizer_names == ["encoder.layer.0.attention.self.query.input_quantizer", "encoder.layer.0.attention.self.query.weight_quantizer"]
    a = next(p for p in plan.points if p.kind == "attention_matmul")
    assert a.quantizer_names[1].endswith(".other_quantizer")
    # the calibration cache key depends on the candidate layout only, not on which points are enabled
    assert plan.layout() == _plan(bert, targets=["encoder.layer.0"]).layout()
    rows = plan.to_rows()
    assert len(rows) == len(plan.points) and set(rows[0]) == {"module", "kind", "op_class", "enabled", "reason"}
