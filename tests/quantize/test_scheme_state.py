"""The scheme modifier (quantize/schemes.py SchemeState) on the tiny BERT: apply puts the model into a scheme's
state and returns its statistics, checks and cache key, undo restores the model bit for bit, a failed
float-equivalence gate leaves the model untouched and says why (PTQ records it, the search fails the trial),
each SmoothQuant state's statistics are collected once, and the search's trials take the recipe's
smoothquant.ffn_out (they used to smooth without FFN-out whatever the recipe said)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_fixtures import TINY_SEQ, make_rows, recipe_dict
from torch import nn

import quant_workbench.quantize.schemes as formats_mod
from quant_workbench.config.recipe import ModelSpec, QuantSpec, Recipe, recipe_from_dict
from quant_workbench.models.loading import LoadedModel, load_model, to_torch, tokenize
from quant_workbench.quantize.apply import calibrate, prepare, quantizers, set_format, set_scales
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.observers import HistogramCalibrator
from quant_workbench.quantize.plan import QuantPlan, build_plan
from quant_workbench.quantize.schemes import (
    Applied,
    FloatEquivalenceError,
    MemoisedRecalibrate,
    Scheme,
    SchemeState,
    SmoothQuantInputs,
    expand_schemes,
    scheme_for,
    scheme_variants,
)
from quant_workbench.quantize.smoothquant import ChannelAmaxCollector
from quant_workbench.search.sensitivity import Config, TrialRunner
from quant_workbench.search.study import resolved_recipe

TEXTS = [t for t, _ in make_rows()]
TOLERANCE = 1e-4
FFN_OUT = "hf.encoder.layer.1.output.dense"


class Tiny:
    """The prepared, calibrated tiny BERT with its per-channel statistics and a counting recalibrate."""

    def __init__(self, model_dir: Path) -> None:
        self.loaded: LoadedModel = load_model(ModelSpec(source=str(model_dir), max_seq_length=TINY_SEQ))
        with torch.no_grad():  # a few large LayerNorm channels, as trained BERTs have: the rewrite has work to do
            for mod in self.loaded.model.modules():
                if isinstance(mod, nn.LayerNorm):
                    mod.weight[3] *= 40.0
                    mod.bias[3] *= 40.0
        self.plan: QuantPlan = build_plan(self.loaded.model.hf, QuantSpec())
        prepare(self.loaded.model.hf, self.plan, per_channel_weights=True)
        self.example = self.feed(TEXTS[200:216])
        with ChannelAmaxCollector(self.loaded.model) as col:
            self.calibrators: dict[str, HistogramCalibrator] = calibrate(self.loaded.model, self.loop)
        self.channels = col.amax
        set_scales(self.loaded.model, self.calibrators, "max")  # scales to keep: a format switch recomputes them
        self.recalibrations: list[dict[str, Any]] = []

    def feed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return to_torch(tokenize(self.loaded.tokenizer, texts, TINY_SEQ, self.loaded.input_names))

    def loop(self, model: nn.Module) -> None:
        model(**self.feed(TEXTS[:16]))

    def recalibrate(self, extra: dict[str, Any]) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
        self.recalibrations.append(extra)
        return calibrate(self.loaded.model, self.loop), {"cache_hit": False, "cache_file": "stats.npz"}

    def inputs(self, tolerance: float = TOLERANCE) -> SmoothQuantInputs:
        return SmoothQuantInputs(self.example, self.channels, self.recalibrate, tolerance)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path) -> Tiny:
    return Tiny(tiny_bert_dir)


@pytest.fixture(autouse=True)
def _fresh_counts(tiny: Tiny) -> Iterator[None]:
    tiny.recalibrations.clear()
    yield


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a scheme state may touch: parameters and buffers (scales, zero points and their dtypes),
    SmoothQuant input scales, quantizer formats and flags."""
    return {
        "tensors": {n: t.detach().clone() for n, t in model.state_dict().items()},
        "smooth_scale": {n: None if m.smooth_scale is None else m.smooth_scale.clone() for n, m in model.named_modules() if isinstance(m, QuantLinear)},
        "formats": {n: q.fmt for n, q in quantizers(model).items()},
        "enabled": {n: q.enabled for n, q in quantizers(model).items()},
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["formats"] == after["formats"] and before["enabled"] == after["enabled"]
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, t in before["tensors"].items():
        assert _same_bits(t, after["tensors"][name]), name
    for name, s in before["smooth_scale"].items():
        u = after["smooth_scale"][name]
        assert (s is None and u is None) or (s is not None and u is not None and _same_bits(s, u)), name


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN amax of an uncalibrated quantizer included; float8 zero points too)."""
    raw = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def _ffn_out_scaled(model: nn.Module) -> bool:
    lin = model.get_submodule(FFN_OUT)
    assert isinstance(lin, QuantLinear)
    return lin.smooth_scale is not None


# ---------------------------------------------------------------------------------------------
# apply / undo


def test_smoothquant_apply_returns_the_state_and_undo_restores_the_model_bit_for_bit(tiny: Tiny) -> None:
    model = tiny.loaded.model
    before = _snapshot(model)
    modifier = SchemeState(Scheme("int8-smoothquant", "int8", alpha=0.5, ffn_out=True), tiny.calibrators, smoothquant=tiny.inputs())
    applied = modifier.apply(model)
    during = _snapshot(model)
    assert any(not torch.equal(during["tensors"][n], t) for n, t in before["tensors"].items() if n.endswith("query.weight"))
    assert _ffn_out_scaled(model)  # ffn_out reaches the rewrite
    assert len(tiny.recalibrations) == 1 and tiny.recalibrations[0]["smoothquant"]["alpha"] == 0.5
    assert applied.calibrators is not tiny.calibrators  # the rewritten model's own statistics
    sq = applied.fidelity["smoothquant"]
    assert sq["float_equivalence"]["passed"] and sq["float_equivalence"]["float_max_abs_diff"] <= TOLERANCE
    assert sq["input_range"]["reduced_inputs"] > 0 and sq["calibration_cache_hit"] is False
    assert set(applied.key) == {"smoothquant"} and applied.key["smoothquant"]["alpha"] == 0.5
    modifier.undo()
    _assert_same(before, _snapshot(model))
    modifier.undo()  # a second undo is a no-op
    _assert_same(before, _snapshot(model))


def test_a_format_state_switches_every_quantizer_and_comes_back(tiny: Tiny) -> None:
    model = tiny.loaded.model
    before = _snapshot(model)
    with SchemeState(Scheme("fp8", "fp8"), tiny.calibrators).applied(model) as applied:
        assert {q.fmt.kind for q in quantizers(model).values()} == {"fp8"}
        assert applied.calibrators is tiny.calibrators and applied.key == {"format": "fp8"} and applied.fidelity == {}
    _assert_same(before, _snapshot(model))
    assert not tiny.recalibrations
    with SchemeState(Scheme("int8", "int8"), tiny.calibrators).applied(model) as applied:
        assert applied.key == {}  # int8's ONNX cache keys stay as they always were
    _assert_same(before, _snapshot(model))


def test_undo_restores_the_format_the_model_was_in(tiny: Tiny) -> None:
    """QAT enters int8 through the modifier; whatever state the model was in comes back afterwards."""
    model = tiny.loaded.model
    set_format(model, "fp8")
    try:
        before = _snapshot(model)
        with SchemeState(scheme_for("int8", None, QuantSpec()), tiny.calibrators).applied(model):
            assert {q.fmt.kind for q in quantizers(model).values()} == {"int8"}
        _assert_same(before, _snapshot(model))
    finally:
        set_format(model, "int8")


def test_applying_twice_without_undo_is_refused(tiny: Tiny) -> None:
    modifier = SchemeState(Scheme("fp8", "fp8"), tiny.calibrators)
    with modifier.applied(tiny.loaded.model), pytest.raises(RuntimeError, match="already applied"):
        modifier.apply(tiny.loaded.model)


# ---------------------------------------------------------------------------------------------
# the float-equivalence gate


def _inexact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real rewrite, reported as having moved the float outputs by 0.25."""
    real = formats_mod.checked_smoothquant

    def inexact(*a: Any, **kw: Any) -> Any:
        state, check = real(*a, **kw)
        return state, {**check, "float_max_abs_diff": 0.25, "passed": False}

    monkeypatch.setattr(formats_mod, "checked_smoothquant", inexact)


def test_a_failed_float_gate_leaves_the_model_unchanged_and_says_why(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _inexact(monkeypatch)
    model = tiny.loaded.model
    before = _snapshot(model)
    modifier = SchemeState(Scheme("int8-smoothquant", "int8", alpha=0.5), tiny.calibrators, smoothquant=tiny.inputs())
    with pytest.raises(FloatEquivalenceError) as err:
        modifier.apply(model)
    assert str(err.value) == "SmoothQuant (alpha 0.5) changed the float model's outputs by 0.25 > 0.0001: the rewrite is not exact, so nothing is built on it"
    check = err.value.fidelity["smoothquant"]["float_equivalence"]
    assert check["passed"] is False and err.value.fidelity["smoothquant"]["alpha"] == 0.5
    assert not tiny.recalibrations  # no statistics collected for a rewrite that is not used
    _assert_same(before, _snapshot(model))


def test_the_real_gate_fails_when_the_tolerance_is_below_the_rewrite_error(tiny: Tiny) -> None:
    """No stand-in: a negative tolerance no rewrite can meet, so checked_smoothquant's own verdict is what fails."""
    before = _snapshot(tiny.loaded.model)
    modifier = SchemeState(Scheme("int8-smoothquant", "int8", alpha=0.5), tiny.calibrators, smoothquant=tiny.inputs(tolerance=-1.0))
    with pytest.raises(FloatEquivalenceError, match=r"SmoothQuant \(alpha 0.5\) changed the float model's outputs by .* > -1"):
        modifier.apply(tiny.loaded.model)
    _assert_same(before, _snapshot(tiny.loaded.model))


def test_ptq_records_a_failed_gate_on_the_schemes_variants_and_goes_on(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    _inexact(monkeypatch)
    model = tiny.loaded.model
    before = _snapshot(model)
    spec = QuantSpec.model_validate({"compare": ["int8", "int8-smoothquant", "fp8"], "smoothquant": {"alpha": 0.5}, "calibration": {"methods": ["max", "mse"]}})
    seen: list[tuple[str, str, Applied, set[str]]] = []
    for scheme, applied, method in scheme_variants(spec, model, tiny.calibrators, tiny.inputs(), say=lambda _: None):
        seen.append((scheme.prefix, method, applied, {q.fmt.kind for q in quantizers(model).values()}))
    assert [(p, m) for p, m, _, _ in seen] == [("int8", "max"), ("int8", "mse"), ("int8-sq0.5", "max"), ("int8-sq0.5", "mse"), ("fp8", "max"), ("fp8", "mse")]
    assert [kinds for _, _, _, kinds in seen] == [{"int8"}] * 4 + [{"fp8"}] * 2
    failed = seen[2][2]
    assert failed.error is not None and failed.error.startswith("SmoothQuant (alpha 0.5) changed the float model's outputs by 0.25")
    assert failed.fidelity["smoothquant"]["float_equivalence"]["passed"] is False  # the report shows the check
    assert seen[0][2].error is None and seen[4][2].error is None and seen[4][2].key == {"format": "fp8"}
    _assert_same(before, _snapshot(model))


def test_a_scheme_that_cannot_be_prepared_fails_its_variants_only(tiny: Tiny) -> None:
    inputs = SmoothQuantInputs(tiny.example, {}, tiny.recalibrate, TOLERANCE)  # no per-channel statistics
    spec = QuantSpec.model_validate({"compare": ["int8-smoothquant", "int8"], "smoothquant": {"alpha": 0.5}, "calibration": {"methods": ["max"]}})
    out = [(s.prefix, a.error) for s, a, _ in scheme_variants(spec, tiny.loaded.model, tiny.calibrators, inputs, say=lambda _: None)]
    assert out[0][0] == "int8-sq0.5" and out[0][1] is not None and "per-channel statistics" in out[0][1]
    assert out[1] == ("int8", None)


# ---------------------------------------------------------------------------------------------
# schemes and the search


def test_expand_schemes_carries_ffn_out_and_scheme_for_takes_the_recipes() -> None:
    spec = QuantSpec.model_validate({"compare": ["int8", "int8-smoothquant"], "smoothquant": {"alpha": [0.5, 0.9], "ffn_out": True}})
    assert [(s.prefix, s.ffn_out) for s in expand_schemes(spec)] == [("int8", False), ("int8-sq0.5", True), ("int8-sq0.9", True)]
    assert scheme_for("int8", 0.7, spec) == Scheme("int8-smoothquant", "int8", alpha=0.7, ffn_out=True)
    assert scheme_for("int8", 0.7, QuantSpec()).ffn_out is False
    assert scheme_for("fp8", None, spec) == Scheme("fp8", "fp8")


def test_memoised_recalibrate_runs_each_state_once() -> None:
    calls: list[dict[str, Any]] = []

    def recalibrate(extra: dict[str, Any]) -> tuple[dict[str, HistogramCalibrator], dict[str, Any]]:
        calls.append(extra)
        return {}, {"cache_hit": extra["smoothquant"]["alpha"] == 0.9}

    memo = MemoisedRecalibrate(recalibrate)
    for alpha in (0.5, 0.5, 0.9, 0.5, 0.9):
        memo({"smoothquant": {"alpha": alpha, "groups": ["g"]}})
    assert [c["smoothquant"]["alpha"] for c in calls] == [0.5, 0.9]
    assert len(memo) == 2 and memo.passes == 1  # 0.9 came from the disk cache


def _search_recipe(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, ffn_out: bool) -> Recipe:
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["quantization"] = {**data["quantization"], "compare": ["int8", "int8-smoothquant"], "smoothquant": {"alpha": 0.5, "ffn_out": ffn_out}}
    data["search"] = {"methods": ["max"], "smoothquant_alphas": [0.5], "max_trials": 0}
    return recipe_from_dict(data)


def _runner(tiny: Tiny, recipe: Recipe) -> TrialRunner:
    """A TrialRunner with only what entering a trial's state needs (the float baseline is not scored)."""
    runner = TrialRunner.__new__(TrialRunner)
    runner.recipe, runner.loaded, runner.plan, runner.calibrators = recipe, tiny.loaded, tiny.plan, tiny.calibrators
    runner.recalibration = MemoisedRecalibrate(tiny.recalibrate)
    runner.smoothquant = SmoothQuantInputs(tiny.example, tiny.channels, runner.recalibration, TOLERANCE)
    return runner


@pytest.mark.parametrize("ffn_out", [True, False])
def test_search_trials_smooth_ffn_out_as_the_recipe_says_and_calibrate_each_alpha_once(
    tiny: Tiny, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, ffn_out: bool
) -> None:
    recipe = _search_recipe(tmp_path, tiny_bert_dir, tiny_csv, ffn_out)
    runner = _runner(tiny, recipe)
    before = _snapshot(tiny.loaded.model)
    for _ in range(2):
        with runner._scheme_state(Config("max", alpha=0.5)) as calibrators:
            assert _ffn_out_scaled(tiny.loaded.model) is ffn_out
            assert calibrators is not tiny.calibrators
    assert len(tiny.recalibrations) == 1 and runner.recalibration is not None and runner.recalibration.passes == 1
    groups = tiny.recalibrations[0]["smoothquant"]["groups"]
    assert any(FFN_OUT in str(g) for g in groups) is ffn_out  # the statistics are those of the same rewrite
    _assert_same(before, _snapshot(tiny.loaded.model))
    reproduced = resolved_recipe(recipe, Config("max", alpha=0.5), _record())
    assert reproduced["quantization"]["smoothquant"] == ({"alpha": 0.5, "ffn_out": True} if ffn_out else {"alpha": 0.5})


def test_a_search_trial_fails_the_same_gate(tiny: Tiny, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inexact(monkeypatch)
    runner = _runner(tiny, _search_recipe(tmp_path, tiny_bert_dir, tiny_csv, False))
    before = _snapshot(tiny.loaded.model)
    with pytest.raises(FloatEquivalenceError, match="changed the float model's outputs by 0.25"), runner._scheme_state(Config("max", alpha=0.5)):
        pass
    _assert_same(before, _snapshot(tiny.loaded.model))


def _record() -> Any:
    from quant_workbench.search.sensitivity import TrialRecord

    return TrialRecord(source="study", config=Config("max", alpha=0.5))


def test_a_trials_smoothquant_groups_come_from_the_recipes_plan_not_the_last_trials_flags(
    tiny: Tiny, tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path
) -> None:
    """A fallback trial leaves some quantizers off; the next SmoothQuant trial still rewrites (and collects the
    statistics of) the groups of the recipe's whole plan, so its rewrite does not depend on the trial order."""
    from quant_workbench.quantize.apply import apply_flags

    runner = _runner(tiny, _search_recipe(tmp_path, tiny_bert_dir, tiny_csv, False))
    try:
        for q in quantizers(tiny.loaded.model).values():
            q.enabled = False  # the last trial kept everything float
        with runner._scheme_state(Config("max", alpha=0.5)):
            pass
    finally:
        apply_flags(tiny.loaded.model.hf, tiny.plan)
    groups = tiny.recalibrations[0]["smoothquant"]["groups"]
    assert len(groups) == 6  # 2 layers x (attention output folded into V, Q/K/V, FFN-in)
