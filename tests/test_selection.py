"""The noise-aware selection rule on synthetic variants with known correctness and timings.

Each scenario is built so that one plausible mutation of the rule (highest point estimate, least
accurate, speed ignored, agreement ignored, float or reference rows selected) picks another variant.
"""

from __future__ import annotations

import numpy as np
import pytest

from quant_workbench.results import LatencyStats, VariantResult
from quant_workbench.selection import select_variant

N = 2000


def _lat(ms: float, rounds: int = 60, jitter: float = 0.01, seed: int = 0, b: int = 32) -> LatencyStats:
    # A shared machine-load pattern per round (seed 0 for every variant) plus a little own noise.
    load = np.random.default_rng(0).uniform(1.0, 1.5, rounds)
    own = 1.0 + jitter * np.random.default_rng(seed + 1).standard_normal(rounds)
    samples = [float(x) for x in ms * load * own]
    return LatencyStats(b, 128, rounds, float(np.median(samples)), 0.0, 0.0, 0.0, 0.0, samples_ms=samples)


def _variant(name: str, correct: np.ndarray, agreement: float, ms: float, *, seed: int = 0, precision: str = "int8", reference: bool = False) -> VariantResult:
    return VariantResult(
        name=name, precision=precision,  # type: ignore[arg-type]
        metrics={"accuracy": float(correct.mean()), "agreement": agreement},
        latency=[_lat(ms, seed=seed)], reference=reference,
    )


def _base() -> np.ndarray:
    out = np.zeros(N, dtype=bool)
    out[np.random.default_rng(7).permutation(N)[:1440]] = True
    return out


def _change(base: np.ndarray, lose: int, gain: int, offset: int = 0) -> np.ndarray:
    out = base.copy()
    out[np.flatnonzero(base)[offset : offset + lose]] = False
    out[np.flatnonzero(~base)[offset : offset + gain]] = True
    return out


def test_a_faster_variant_tied_on_accuracy_wins_over_the_highest_point_estimate() -> None:
    base = _base()
    correct = {"float": base, "int8-a": _change(base, 0, 3), "int8-b": base.copy(), "int8-c": _change(base, 80, 0, 10)}
    variants = [
        _variant("float", base, 1.0, 20.0, precision="float32"),
        _variant("int8-a", correct["int8-a"], 0.97, 12.0, seed=1),  # most accurate, slower
        _variant("int8-b", correct["int8-b"], 0.96, 8.0, seed=2),  # 3 examples behind: tied, and fastest
        _variant("int8-c", correct["int8-c"], 0.90, 7.0, seed=3),  # fastest of all but 4 points worse
    ]
    sel = select_variant(variants, correct)
    assert sel.most_accurate == "int8-a"
    assert sel.accuracy_tie_group == ["int8-a", "int8-b"]  # int8-c is significantly worse
    assert sel.fastest == "int8-b" and sel.speed_tie_group == ["int8-b"]
    assert sel.winner == "int8-b"  # not int8-a (point estimate), not int8-c (speed alone), not float
    assert "int8-a" in sel.reason and "int8-b" in sel.reason and sel.reason.endswith("-> int8-b.")


def test_the_least_accurate_is_never_picked_when_it_is_significantly_worse() -> None:
    base = _base()
    correct = {"int8-good": base.copy(), "int8-bad": _change(base, 100, 0)}
    variants = [
        _variant("int8-good", correct["int8-good"], 0.97, 10.0, seed=1),
        _variant("int8-bad", correct["int8-bad"], 0.90, 10.0, seed=2),
    ]
    sel = select_variant(variants, correct)
    assert sel.accuracy_tie_group == ["int8-good"]
    assert sel.winner == "int8-good"


def test_speed_ties_are_broken_by_agreement_with_float() -> None:
    base = _base()
    correct = {"int8-max": _change(base, 0, 3), "int8-mse": base.copy()}
    variants = [
        _variant("int8-max", correct["int8-max"], 0.948, 8.00, seed=1),  # 3 examples ahead, agrees less
        _variant("int8-mse", correct["int8-mse"], 0.966, 8.02, seed=2),  # same speed within noise
    ]
    sel = select_variant(variants, correct)
    assert sel.accuracy_tie_group == ["int8-max", "int8-mse"]
    assert sel.speed_tie_group == ["int8-max", "int8-mse"]
    assert sel.winner == "int8-mse"
    assert "agrees most with float" in sel.reason


def test_float_and_reference_rows_are_never_selected() -> None:
    base = _base()
    correct = {"float": _change(base, 0, 30), "ref:ort-static": _change(base, 0, 20), "int8-max": base.copy()}
    variants = [
        _variant("float", correct["float"], 1.0, 20.0, precision="float32"),
        _variant("ref:ort-static", correct["ref:ort-static"], 0.99, 5.0, seed=1, reference=True),
        _variant("int8-max", correct["int8-max"], 0.96, 9.0, seed=2),
    ]
    sel = select_variant(variants, correct)
    assert sel.winner == "int8-max" and sel.accuracy_tie_group == ["int8-max"]


def test_without_latency_the_tie_group_is_decided_by_agreement() -> None:
    base = _base()
    correct = {"int8-a": base.copy(), "int8-b": _change(base, 1, 0)}
    variants = [_variant("int8-a", correct["int8-a"], 0.95, 1.0), _variant("int8-b", correct["int8-b"], 0.99, 1.0)]
    for v in variants:
        v.latency = []
    sel = select_variant(variants, correct)
    assert sel.shape is None and sel.winner == "int8-b"
    assert "latency was not measured" in sel.reason


def test_no_candidates_and_the_recorded_rule() -> None:
    sel = select_variant([VariantResult(name="float", precision="float32", metrics={"accuracy": 0.7})], {})
    assert sel.winner is None
    assert "McNemar" in sel.rule and "0.05" in sel.rule
    d = select_variant([], {}, level=0.01).to_dict()
    assert d["level"] == 0.01 and d["tie_groups"] == {"accuracy": [], "speed": []}


@pytest.mark.parametrize("level, tied", [(0.05, True), (0.5, False)])
def test_the_level_decides_what_counts_as_tied(level: float, tied: bool) -> None:
    base = _base()
    # 12 discordant pairs, 9 vs 3: McNemar p ~ 0.146, tied at 0.05 but not at 0.5
    correct = {"int8-a": _change(base, 3, 9), "int8-b": base.copy()}
    variants = [_variant("int8-a", correct["int8-a"], 0.95, 12.0, seed=1), _variant("int8-b", correct["int8-b"], 0.95, 8.0, seed=2)]
    sel = select_variant(variants, correct, level)
    assert sel.winner == ("int8-b" if tied else "int8-a")


def test_a_failed_variant_is_never_selected_even_with_scores() -> None:
    # scored, then failed later (e.g. in the benchmark): its numbers are not a result to ship
    base = _base()
    correct = {"int8-broken": _change(base, 0, 40), "int8-max": base.copy()}
    broken = _variant("int8-broken", correct["int8-broken"], 0.99, 5.0, seed=1)
    broken.status = "failed"
    sel = select_variant([broken, _variant("int8-max", correct["int8-max"], 0.96, 9.0, seed=2)], correct)
    assert sel.winner == "int8-max" and sel.accuracy_tie_group == ["int8-max"]


def test_the_most_accurate_is_found_by_accuracy_not_agreement() -> None:
    # int8-b agrees more with float but is 60 examples (significantly) less accurate
    base = _base()
    correct = {"int8-a": _change(base, 0, 60), "int8-b": base.copy()}
    variants = [_variant("int8-a", correct["int8-a"], 0.93, 10.0, seed=1), _variant("int8-b", correct["int8-b"], 0.99, 10.0, seed=2)]
    sel = select_variant(variants, correct)
    assert sel.most_accurate == "int8-a" and sel.winner == "int8-a"


@pytest.mark.parametrize("order", [["int8-b", "int8-a"], ["int8-a", "int8-b"]])
def test_exact_ties_go_to_the_first_name_whatever_the_build_order(order: list[str]) -> None:
    base = _base()
    correct = {n: base.copy() for n in order}
    # same correctness, agreement and timing samples: nothing but the name tells them apart
    sel = select_variant([_variant(n, correct[n], 0.95, 10.0) for n in order], correct)
    assert sel.winner == "int8-a" and sel.most_accurate == "int8-a" and sel.fastest == "int8-a"


def test_speed_is_compared_at_the_largest_shape_every_candidate_ran() -> None:
    # int8-a wins at batch 1, int8-b at batch 32 (the throughput shape); batch 64 only int8-a ran
    base = _base()
    correct = {"int8-a": base.copy(), "int8-b": base.copy()}
    a = _variant("int8-a", correct["int8-a"], 0.95, 10.0, seed=1)
    b = _variant("int8-b", correct["int8-b"], 0.95, 7.0, seed=2)
    a.latency = [_lat(1.0, seed=1, b=1), _lat(10.0, seed=1, b=32), _lat(15.0, seed=1, b=64)]
    b.latency = [_lat(2.0, seed=2, b=1), _lat(7.0, seed=2, b=32)]
    sel = select_variant([a, b], correct)
    assert sel.shape == "b32xs128" and sel.fastest == "int8-b" and sel.winner == "int8-b"
