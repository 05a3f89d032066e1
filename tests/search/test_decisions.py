"""The search's decisions on hand-built records: criterion, selection, Pareto front, sensitivity
ranking and the automatic fallback. No model is loaded; a scripted runner stands in for TrialRunner.

Each test is built so that a plausible mutation of the decision (min for max, a flipped comparison, a
reversed order, a dropped tie-break or tolerance) picks something else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import pytest
from pydantic import ValidationError

from quant_workbench.config.search import CriterionSpec, SearchSpec
from quant_workbench.core.results import VariantResult
from quant_workbench.search.groups import LayerGroup
from quant_workbench.search.sensitivity import Config, TrialRecord, TrialRunner, auto_fallback, sensitivity
from quant_workbench.search.study import _dedupe, criterion_at_lower_bound, pareto_front, select

FLOAT_MS = 20.0


def _rec(key: str, acc: float | None, ms: float | None = 10.0, *, status: str = "ok", float_ms: float | None = FLOAT_MS) -> TrialRecord:
    return TrialRecord(source="study", config=Config("max"), key=key, accuracy=acc, p50_ms=ms, float_p50_ms=float_ms, status=status)


def _keys(recs: Sequence[TrialRecord]) -> list[str]:
    return [r.key for r in recs]


# ---------------------------------------------------------------------------------------------
# criterion thresholds


def test_relative_criterion_is_a_fraction_of_float_accuracy() -> None:
    # 0.5 * (1 - 0.1) = 0.45; read as an absolute drop it would be 0.4
    assert CriterionSpec(relative=0.1).threshold(0.5) == pytest.approx(0.45)


def test_absolute_criterion_is_a_drop_in_accuracy_points() -> None:
    # 0.5 - 0.1 = 0.4; read as a fraction of float it would be 0.45
    assert CriterionSpec(absolute=0.1).threshold(0.5) == pytest.approx(0.4)


def test_criterion_needs_exactly_one_kind_of_drop() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        CriterionSpec(relative=0.01, absolute=0.005)
    with pytest.raises(ValidationError, match="exactly one"):
        CriterionSpec()


def test_criterion_descriptions_name_their_kind_and_scale() -> None:
    assert CriterionSpec(relative=0.01).describe() == "accuracy drop <= 1 % of float (relative)"
    assert CriterionSpec(absolute=0.005).describe() == "accuracy drop <= 0.005 (absolute)"


def test_default_criterion_is_one_percent_relative() -> None:
    crit = SearchSpec().criterion
    assert crit.relative == 0.01 and crit.absolute is None


# ---------------------------------------------------------------------------------------------
# selection: fastest meeting the criterion, else the most accurate


def test_select_takes_the_fastest_configuration_that_meets() -> None:
    recs = [_rec("acc", 0.90, 15.0), _rec("fast", 0.86, 8.0), _rec("mid", 0.88, 11.0), _rec("miss", 0.70, 4.0)]
    best, meets = select(recs, threshold=0.85)
    assert best is not None and best.key == "fast" and meets is True


def test_select_never_takes_a_configuration_below_the_threshold() -> None:
    # the fastest one misses by one example; the slower one meets
    best, meets = select([_rec("below", 0.849, 5.0), _rec("meets", 0.851, 10.0)], threshold=0.85)
    assert best is not None and best.key == "meets" and meets


def test_select_counts_an_accuracy_at_the_threshold_as_meeting() -> None:
    # 72/100 is exactly 10 % below 80/100, but 0.8 * 0.9 rounds to 0.7200000000000001 in binary
    threshold = CriterionSpec(relative=0.1).threshold(0.8)
    assert threshold > 0.72
    best, meets = select([_rec("at", 0.72, 5.0), _rec("above", 0.75, 10.0)], threshold)
    assert best is not None and best.key == "at" and meets


def test_select_breaks_a_latency_tie_by_accuracy() -> None:
    recs = [_rec("worse", 0.86, 8.0), _rec("better", 0.88, 8.0), _rec("slow", 0.95, 12.0)]
    best, _ = select(recs, threshold=0.85)
    assert best is not None and best.key == "better"


def test_select_ranks_speed_by_the_ratio_to_float_not_milliseconds() -> None:
    # timed on a loaded machine: more ms, but faster relative to the float run timed alongside it
    recs = [_rec("calm", 0.90, 8.0, float_ms=10.0), _rec("loaded", 0.90, 12.0, float_ms=20.0)]
    best, _ = select(recs, threshold=0.85)
    assert best is not None and best.key == "loaded"


def test_select_puts_an_untimed_configuration_after_timed_ones() -> None:
    recs = [_rec("untimed", 0.95, None), _rec("timed", 0.90, 15.0)]
    best, meets = select(recs, threshold=0.85)
    assert best is not None and best.key == "timed" and meets


def test_select_lets_accuracy_decide_within_the_speed_margin() -> None:
    # "close" is 2 % slower than "fast" (point estimates, no intervals): within ±3 % they are equally fast
    recs = [_rec("fast", 0.86, 10.0), _rec("close", 0.88, 10.2), _rec("slow", 0.95, 12.0)]
    best, _ = select(recs, threshold=0.85)
    assert best is not None and best.key == "close"
    best, _ = select(recs, threshold=0.85, speed_margin=0.01)
    assert best is not None and best.key == "fast"


def test_select_counts_a_speed_difference_only_beyond_its_intervals() -> None:
    # 12 % slower by the point estimates, but each trial's 8-round speed-up is known to ±10 %: not clearly slower
    fast, wide = _rec("fast", 0.86, 10.0), _rec("wide", 0.90, 11.2)
    for r in (fast, wide):
        r.speedup = FLOAT_MS / (r.p50_ms or 1.0)
        r.speedup_low, r.speedup_high = r.speedup / 1.1, r.speedup * 1.1
    best, _ = select([fast, wide], threshold=0.85)
    assert best is not None and best.key == "wide"
    for r in (fast, wide):  # the same point estimates known to ±1 %: 12 % slower is clearly slower
        r.speedup_low, r.speedup_high = (r.speedup or 1.0) / 1.01, (r.speedup or 1.0) * 1.01
    best, _ = select([fast, wide], threshold=0.85)
    assert best is not None and best.key == "fast"


def test_select_falls_back_to_the_most_accurate_when_none_meets() -> None:
    recs = [_rec("fast", 0.70, 5.0), _rec("best", 0.80, 15.0), _rec("mid", 0.75, 10.0)]
    best, meets = select(recs, threshold=0.85)
    assert best is not None and best.key == "best" and meets is False


def test_select_fallback_breaks_an_accuracy_tie_by_speed() -> None:
    recs = [_rec("slow", 0.80, 15.0), _rec("fast", 0.80, 9.0), _rec("worse", 0.70, 5.0)]
    best, meets = select(recs, threshold=0.85)
    assert best is not None and best.key == "fast" and not meets


def test_select_ignores_failed_and_unscored_records() -> None:
    recs = [_rec("failed", 0.99, 1.0, status="failed"), _rec("unscored", None, 2.0), _rec("ok", 0.86, 10.0)]
    best, meets = select(recs, threshold=0.85)
    assert best is not None and best.key == "ok" and meets
    assert select(recs[:2], threshold=0.85) == (None, False)
    assert select([], threshold=0.5) == (None, False)


# ---------------------------------------------------------------------------------------------
# dedupe and Pareto front


def test_dedupe_keeps_the_first_record_of_a_key_in_order() -> None:
    # a reused configuration (same key) evaluated again later must not replace the first measurement
    first, again = _rec("k1", 0.80, 10.0), _rec("k1", 0.90, 5.0)
    out = _dedupe([_rec("k2", 0.7), first, _rec("k3", 0.6), again])
    assert _keys(out) == ["k2", "k1", "k3"]
    assert out[1] is first


def test_dedupe_drops_failed_unscored_and_keyless_records() -> None:
    out = _dedupe([_rec("f", 0.9, status="failed"), _rec("n", None), _rec("", 0.9), _rec("ok", 0.8)])
    assert _keys(out) == ["ok"]


def test_pareto_front_keeps_the_trade_offs_sorted_fastest_first() -> None:
    # (accuracy, relative latency): c, b, a trade accuracy for speed; d is beaten by b on both
    pts = [(0.80, 0.50), (0.79, 0.25), (0.70, 0.20), (0.78, 0.30)]
    assert pareto_front(pts) == [2, 1, 0]


def test_pareto_front_drops_points_beaten_on_one_objective_and_tied_on_the_other() -> None:
    pts = [(0.80, 0.50), (0.80, 0.60), (0.75, 0.50)]  # same accuracy but slower; same speed but less accurate
    assert pareto_front(pts) == [0]


def test_pareto_front_keeps_identical_points() -> None:
    # neither dominates the other: dominance needs a strict win on one objective
    assert pareto_front([(0.8, 0.5), (0.8, 0.5)]) == [0, 1]


# ---------------------------------------------------------------------------------------------
# criterion at the lower bound of the paired interval


def _selected(delta: float, low: float, high: float, level: float = 0.05) -> VariantResult:
    v = VariantResult(name="int8-search", precision="int8")
    v.intervals = {"vs_float": {"delta": delta, "delta_low": low, "delta_high": high, "level": level}}
    return v


def test_lower_bound_check_uses_the_interval_low_end() -> None:
    v = _selected(delta=-0.002, low=-0.020, high=0.010)
    # point estimate 0.798 and high end meet 0.79; the low end 0.78 does not
    out = criterion_at_lower_bound(v, float_accuracy=0.80, threshold=0.79)
    assert out["selected_meets_at_lower_bound"] is False
    assert out["selected_delta_low"] == -0.020
    assert criterion_at_lower_bound(v, float_accuracy=0.80, threshold=0.77)["selected_meets_at_lower_bound"] is True


def test_lower_bound_exactly_at_the_threshold_holds() -> None:
    # a low end of exactly 10 % of 0.56: 0.56 - 0.056 rounds below 0.56 * 0.9 in binary
    threshold = CriterionSpec(relative=0.1).threshold(0.56)
    assert threshold > 0.56 - 0.056
    v = _selected(delta=-0.03, low=-0.056, high=0.0)
    out = criterion_at_lower_bound(v, float_accuracy=0.56, threshold=threshold)
    assert out["selected_meets_at_lower_bound"] is True


def test_lower_bound_reports_the_interval_confidence_and_none_without_an_interval() -> None:
    out = criterion_at_lower_bound(_selected(0.0, -0.01, 0.01, level=0.1), 0.8, 0.7)
    assert out["interval_confidence"] == pytest.approx(90.0)
    assert criterion_at_lower_bound(None, 0.8, 0.7) == {"selected_meets_at_lower_bound": None}
    assert criterion_at_lower_bound(VariantResult(name="x", precision="int8"), 0.8, 0.7) == {"selected_meets_at_lower_bound": None}


# ---------------------------------------------------------------------------------------------
# sensitivity ranking and automatic fallback, against a scripted runner


class ScriptedRunner:
    """The part of TrialRunner that `sensitivity` and `auto_fallback` use: groups, float accuracy and
    `evaluate`, which here looks the configuration up in a script and records the call."""

    def __init__(
        self,
        groups: Sequence[str],
        score: Callable[[Config], tuple[float | None, float]],
        *,
        float_accuracy: float = 0.80,
        threshold: float = 0.0,
    ) -> None:
        self.groups = [LayerGroup(g, "kind", (f"{g}.dense",)) for g in groups]
        self.float_accuracy = float_accuracy
        self.threshold = threshold
        self.score = score
        self.calls: list[Config] = []

    def evaluate(self, config: Config, source: str, *, trial_number: int | None = None) -> TrialRecord:
        self.calls.append(config)
        acc, cos = self.score(config)
        rec = TrialRecord(source=source, config=config, key=config.label(), accuracy=acc, metrics={"cosine_to_float": cos})
        if acc is None:  # a failed evaluation has no scores at all
            rec.status, rec.metrics = "failed", {}
        else:
            rec.meets = acc >= self.threshold - 1e-12  # as TrialRunner.evaluate decides it
        return rec

    def as_runner(self) -> TrialRunner:
        # the search functions are typed against the real runner; they only use the members above
        return cast(TrialRunner, self)


ALL_INT8 = TrialRecord(source="baseline", config=Config("max"), key="all", accuracy=0.70, metrics={"cosine_to_float": 0.90})


def _by_group(only: Mapping[str, tuple[float | None, float]], floated: Mapping[str, tuple[float | None, float]]) -> Callable[[Config], tuple[float | None, float]]:
    def score(c: Config) -> tuple[float | None, float]:
        return only[c.only[0]] if c.only else floated[c.float_groups[0]]

    return score


def _ranking(runner: ScriptedRunner) -> list[str]:
    return [r.group.name for r in sensitivity(runner.as_runner(), "max", None, ALL_INT8)]


def test_sensitivity_evaluates_each_group_alone_quantized_and_alone_float() -> None:
    runner = ScriptedRunner(["a", "b"], lambda c: (0.75, 0.95))
    sensitivity(runner.as_runner(), "percentile", 99.9, ALL_INT8)
    assert runner.calls == [
        Config("percentile", 99.9, only=("a",)), Config("percentile", 99.9, float_groups=("a",)),
        Config("percentile", 99.9, only=("b",)), Config("percentile", 99.9, float_groups=("b",)),
    ]


def test_sensitivity_ranks_the_largest_drop_when_quantized_alone_first() -> None:
    # float 0.80; quantizing only b costs 8 points, only c 4, only a 1; keeping any one float gains nothing
    only = {"a": (0.79, 0.95), "b": (0.72, 0.95), "c": (0.76, 0.95)}
    floated = dict.fromkeys(only, (0.70, 0.90))
    assert _ranking(ScriptedRunner(list(only), _by_group(only, floated))) == ["b", "c", "a"]


def test_sensitivity_ranks_the_largest_gain_when_kept_float_alone_first() -> None:
    # all-INT8 0.70; keeping only a float recovers 5 points, only c 3, only b 1; quantized alone all tie
    only = dict.fromkeys("abc", (0.78, 0.95))
    floated = {"a": (0.75, 0.90), "b": (0.71, 0.90), "c": (0.73, 0.90)}
    assert _ranking(ScriptedRunner(list(only), _by_group(only, floated))) == ["a", "c", "b"]


def test_sensitivity_breaks_accuracy_ties_by_cosine_to_float() -> None:
    # equal accuracies everywhere: b's output moves furthest from float when quantized alone,
    # c's moves closest to float when kept float alone, a changes neither
    only = {"a": (0.78, 0.99), "b": (0.78, 0.93), "c": (0.78, 0.99)}
    floated = {"a": (0.72, 0.90), "b": (0.72, 0.90), "c": (0.72, 0.94)}
    assert _ranking(ScriptedRunner(list(only), _by_group(only, floated))) == ["b", "c", "a"]


def test_sensitivity_score_sums_the_four_effects() -> None:
    only, floated = {"a": (0.76, 0.97)}, {"a": (0.73, 0.92)}
    (row,) = sensitivity(ScriptedRunner(["a"], _by_group(only, floated)).as_runner(), "max", None, ALL_INT8)
    # drop 0.04 + gain 0.03 + (1 - 0.97) + (0.92 - 0.90)
    assert row.score == pytest.approx(0.04 + 0.03 + 0.03 + 0.02)


def test_sensitivity_ranks_a_group_that_fails_quantized_alone_first() -> None:
    # a broken export of "b" alone is the strongest signal of sensitivity, not a neutral one
    only = {"a": (0.74, 0.95), "b": (None, 0.0), "c": (0.79, 0.99)}
    floated = dict.fromkeys(only, (0.70, 0.90))
    rows = sensitivity(ScriptedRunner(list(only), _by_group(only, floated)).as_runner(), "max", None, ALL_INT8)
    assert [r.group.name for r in rows] == ["b", "a", "c"]
    # the whole accuracy (1.0) as its drop, plus no cosine to float at all (1.0)
    assert rows[0].score == pytest.approx(2.0)


# Fallback: accuracy = all-INT8 0.70 plus each float group's recovery (in thousandths, so sums are exact).
def _additive(gains: dict[str, int], base: int = 700) -> Callable[[Config], tuple[float | None, float]]:
    def score(c: Config) -> tuple[float | None, float]:
        return (base + sum(gains[g] for g in c.float_groups)) / 1000, 0.95

    return score


def _start(runner: ScriptedRunner) -> TrialRecord:
    return runner.evaluate(Config("max"), "baseline")


def _floated(calls: Sequence[Config]) -> list[tuple[str, ...]]:
    return [c.float_groups for c in calls]


def test_fallback_does_nothing_when_all_int8_meets() -> None:
    runner = ScriptedRunner(["a", "b"], _additive({"a": 50, "b": 30}), threshold=0.70)
    start = _start(runner)
    fb = auto_fallback(runner.as_runner(), ["a", "b"], "max", None, start)
    assert runner.calls == [Config("max")]  # only the start
    assert fb.final is start and fb.float_groups == [] and fb.meets is True


def test_fallback_floats_groups_in_ranking_order_and_stops_once_met() -> None:
    # ranking b, a, c; b + a reach 0.78 >= 0.77, so c is never kept float
    runner = ScriptedRunner(["a", "b", "c"], _additive({"a": 30, "b": 50, "c": 10}), threshold=0.77)
    fb = auto_fallback(runner.as_runner(), ["b", "a", "c"], "max", None, _start(runner))
    floated = _floated(runner.calls[1:])
    assert floated[:2] == [("b",), ("b", "a")]
    assert not any("c" in f for f in floated)
    assert fb.float_groups == ["b", "a"] and fb.meets is True and fb.final.accuracy == pytest.approx(0.78)


def test_fallback_requantizes_groups_the_criterion_does_not_need_least_sensitive_first() -> None:
    # greedy: a (0.75), a+b (0.76), a+b+c (0.79) meets 0.78; then without c 0.76 (no), without b 0.78 (yes),
    # without a as well 0.73 (no): b goes back to INT8
    runner = ScriptedRunner(["a", "b", "c"], _additive({"a": 50, "b": 10, "c": 30}), threshold=0.78)
    fb = auto_fallback(runner.as_runner(), ["a", "b", "c"], "max", None, _start(runner))
    assert _floated(runner.calls[1:]) == [("a",), ("a", "b"), ("a", "b", "c"), ("a", "b"), ("a", "c"), ("c",)]
    assert fb.float_groups == ["a", "c"] and fb.meets is True
    assert [s.config.float_groups for s in fb.steps] == [(), *_floated(runner.calls[1:])]


def test_fallback_that_never_meets_reports_the_most_accurate_step() -> None:
    # c hurts: the last step (a+b+c, 0.74) is not the best one (a+b, 0.76)
    runner = ScriptedRunner(["a", "b", "c"], _additive({"a": 50, "b": 10, "c": -20}), threshold=0.90)
    fb = auto_fallback(runner.as_runner(), ["a", "b", "c"], "max", None, _start(runner))
    assert _floated(runner.calls[1:]) == [("a",), ("a", "b"), ("a", "b", "c")]
    assert fb.meets is False and fb.float_groups == ["a", "b"] and fb.final.accuracy == pytest.approx(0.76)


def test_fallback_goes_past_a_failed_step_and_never_reports_it() -> None:
    def score(c: Config) -> tuple[float | None, float]:
        if c.float_groups == ("a",):
            return None, 0.0  # this export fails; the search must still try keeping b float too
        return _additive({"a": 10, "b": 60, "c": -20})(c)

    runner = ScriptedRunner(["a", "b", "c"], score, threshold=0.95)
    fb = auto_fallback(runner.as_runner(), ["a", "b", "c"], "max", None, _start(runner))
    assert _floated(runner.calls[1:]) == [("a",), ("a", "b"), ("a", "b", "c")]
    assert fb.final.status == "ok" and fb.float_groups == ["a", "b"] and fb.meets is False
    assert fb.final.accuracy == pytest.approx(0.77)


# ---------------------------------------------------------------------------------------------
# a worker killed between creating its trial and naming itself must not hold a budget slot forever


def test_an_unnamed_running_trial_is_failed_once_past_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from quant_workbench.search import study as study_mod

    study = optuna.create_study(directions=["maximize"])
    orphan = study.ask()  # created RUNNING, never named: its worker died right here
    orphan.suggest_categorical("method", ["max", "mse"])
    named = study.ask()
    named.set_user_attr(study_mod.WORKER_ATTR, study_mod._worker_id())  # this live process

    assert study_mod.fail_dead_local_trials(study) == 0  # within the grace: maybe a live worker about to name it
    assert 0 < study_mod.wait_out_unnamed_trials(study) <= study_mod.UNNAMED_GRACE_S
    monkeypatch.setattr(study_mod, "UNNAMED_GRACE_S", 0.0)
    assert study_mod.fail_dead_local_trials(study) == 1
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert states[named.number] == optuna.trial.TrialState.RUNNING  # a live named worker is left alone
    failed = study.get_trials(deepcopy=False)[orphan.number]
    assert "before naming itself" in failed.user_attrs[study_mod.INTERRUPTED_ATTR]
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs.get("fixed_params") for t in waiting] == [{"method": orphan.params["method"]}]  # it runs again first
    assert study_mod.wait_out_unnamed_trials(study) == 0.0
