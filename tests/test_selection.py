"""The margin rule on synthetic variants with known correctness and timings.

Each scenario is built so that a plausible mutation of the rule (significance instead of the margin, no
Holm adjustment, speed margin ignored, agreement before accuracy, emulated or slower variants allowed,
float or reference rows selected) picks another variant or another outcome.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from quant_workbench.config.recipe import accuracy_margin_for
from quant_workbench.core.results import LatencyStats, VariantResult, accuracy_reference
from quant_workbench.measure.stats import required_size
from quant_workbench.selection import candidates, select_variant, speed_baseline, speed_resolution

N = 10_000


def _lat(ms: float, rounds: int = 60, jitter: float = 0.004, seed: int = 0, b: int = 32) -> LatencyStats:
    # A shared machine-load pattern per round (seed 0 for every variant) plus a little own noise.
    load = np.random.default_rng(0).uniform(1.0, 1.5, rounds)
    own = 1.0 + jitter * np.random.default_rng(seed + 1).standard_normal(rounds)
    samples = [float(x) for x in ms * load * own]
    return LatencyStats(b, 128, rounds, float(np.median(samples)), 0.0, 0.0, 0.0, 0.0, samples_ms=samples)


def _float() -> np.ndarray:
    out = np.zeros(N, dtype=bool)
    out[np.random.default_rng(7).permutation(N)[:7200]] = True
    return out


def _paired(base: np.ndarray, gain: int, lose: int, offset: int = 0) -> np.ndarray:
    """A variant right where float is, except `gain` examples float misses and `lose` it gets (b, c)."""
    out = base.copy()
    out[np.flatnonzero(~base)[offset : offset + gain]] = True
    out[np.flatnonzero(base)[offset : offset + lose]] = False
    return out


def _variant(name: str, correct: np.ndarray, ms: float, *, agreement: float = 0.97, seed: int = 1, precision: str = "int8", **kw: Any) -> VariantResult:
    return VariantResult(
        name=name, precision=precision,  # type: ignore[arg-type]
        metrics={"accuracy": float(correct.mean()), "agreement": agreement},
        latency=[_lat(ms, seed=seed)], **kw,
    )


def _run(spec: dict[str, tuple[np.ndarray, float]], **kw: Any) -> Any:
    base = _float()
    correct = {"float": base, **{n: c for n, (c, _) in spec.items()}}
    variants = [_variant("float", base, 20.0, precision="float32", seed=0), *(_variant(n, c, ms, seed=i + 1) for i, (n, (c, ms)) in enumerate(spec.items()))]
    return select_variant(variants, correct, **kw), variants, correct


def test_a_variant_outside_the_accuracy_margin_never_wins_on_speed() -> None:
    # the run: int8-mse (-0.53 pt, interval reaching -0.8) 1 % faster than int8-dynamic (-0.12 pt);
    # the old rule tied them on accuracy (McNemar between the two, discordance high) and took the faster one
    base = _float()
    mse = _paired(base, 100, 153)  # Δ -0.53 pt
    dyn = _paired(base, 118, 130, offset=300)  # Δ -0.12 pt
    sel, *_ = _run({"int8-mse": (mse, 10.0), "int8-dynamic": (dyn, 10.1)})
    assert sel.outcome == "decided"
    assert sel.acceptable == ["int8-dynamic"] and "int8-mse" in sel.undetermined
    assert sel.winner == "int8-dynamic"
    # not significantly worse is not the same as within the margin: -0.4 pt on 1,040 discordant pairs reaches -1 pt
    wide = _paired(base, 500, 540, offset=1000)
    sel, *_ = _run({"int8-wide": (wide, 9.0), "int8-dynamic": (dyn, 10.1)})
    d = next(x for x in sel.accuracy if x.name == "int8-wide")
    assert d.low < -0.005 < 0 < d.high and d.status == "undetermined"
    assert sel.winner == "int8-dynamic"


def test_within_the_speed_margin_accuracy_decides() -> None:
    # int8-b is 2 % slower than int8-a, clearly (interval excludes 1) but inside the ±3 % margin: as fast
    base = _float()
    a = _paired(base, 100, 100)
    b = _paired(base, 110, 90, offset=400)  # more accurate
    sel, *_ = _run({"int8-a": (a, 10.0), "int8-b": (b, 10.2)})
    assert sel.acceptable == ["int8-a", "int8-b"]
    assert sel.fastest == "int8-a" and sel.speed_group == ["int8-a", "int8-b"]
    assert sel.winner == "int8-b"
    cmp = next(s for s in sel.speed if s.name == "int8-b" and s.versus == "int8-a")
    assert cmp.status == "equivalent" and cmp.low is not None and cmp.low > 1.0


def test_among_equally_fast_candidates_accuracy_comes_before_agreement() -> None:
    base = _float()
    a, b = _paired(base, 100, 100), _paired(base, 110, 90, offset=400)
    variants = [_variant("float", base, 20.0, precision="float32", seed=0), _variant("int8-a", a, 10.0, agreement=0.99), _variant("int8-b", b, 10.1, agreement=0.95, seed=2)]
    sel = select_variant(variants, {"float": base, "int8-a": a, "int8-b": b})
    assert sel.speed_group == ["int8-a", "int8-b"] and sel.winner == "int8-b"  # more accurate, though it agrees less


def test_beyond_the_speed_margin_the_fastest_wins_even_if_less_accurate() -> None:
    base = _float()
    a = _paired(base, 100, 100)
    b = _paired(base, 110, 90, offset=400)
    sel, *_ = _run({"int8-a": (a, 10.0), "int8-b": (b, 11.0)})  # 10 % slower: beyond the margin
    assert sel.speed_group == ["int8-a"] and sel.winner == "int8-a"
    sel_wide, *_ = _run({"int8-a": (a, 10.0), "int8-b": (b, 11.0)}, speed_margin=0.15)
    assert sel_wide.winner == "int8-b"  # the margin, not significance, decides


def test_holm_adjusts_the_non_inferiority_tests_over_the_candidates() -> None:
    base = _float()
    good = _paired(base, 118, 130, offset=300)  # Δ -0.12 pt, one-sided p ~ 0.008: enough alone, not after Holm over 5
    far = [_paired(base, 50, 200, offset=600 + 300 * i) for i in range(4)]  # -1.5 pt: inferior
    alone, *_ = _run({"int8-good": (good, 10.0)})
    assert alone.acceptable == ["int8-good"] and alone.accuracy[0].p_noninferiority < 0.025
    five, *_ = _run({"int8-good": (good, 10.0), **{f"int8-far{i}": (c, 9.0) for i, c in enumerate(far)}})
    d = next(x for x in five.accuracy if x.name == "int8-good")
    assert d.p_noninferiority < 0.025 < d.p_holm  # unadjusted it would pass
    assert five.acceptable == [] and five.outcome == "undetermined" and five.winner == "int8-good"
    assert len(five.accuracy) == 5 and "5 candidate(s)" in five.rule
    # the size named is the one the strictest Holm step (level / 5) would need
    assert five.needed_evaluation_size == required_size(d.discordant / d.n, abs(d.delta + 0.005), 0.05 / 5)


def test_undetermined_names_the_size_that_would_decide() -> None:
    base = _float()
    a = _paired(base, 20, 30, offset=0)  # on the first 1,000 examples: too few to decide at 0.5 pt
    small = {"float": base[:1000]}
    variants = [_variant("float", base[:1000], 20.0, precision="float32", seed=0), _variant("int8-a", a[:1000], 10.0)]
    small["int8-a"] = a[:1000]
    sel = select_variant(variants, small)
    d = sel.accuracy[0]
    assert sel.outcome == "undetermined" and sel.winner == "int8-a"
    assert sel.needed_evaluation_size == required_size(max(d.discordant / d.n, 1 / d.n), abs(d.delta + 0.005), 0.05)
    assert sel.warning and "undetermined" in sel.warning and f"{sel.needed_evaluation_size:,}" in sel.warning


def test_nothing_within_the_margin_recommends_the_most_accurate_with_a_warning() -> None:
    base = _float()
    sel, *_ = _run({"int8-a": (_paired(base, 50, 250), 9.0), "int8-b": (_paired(base, 50, 200, offset=500), 10.0)})
    assert sel.outcome == "none within the margin" and sel.inferior == ["int8-a", "int8-b"]
    assert sel.winner == "int8-b" and sel.warning


def test_without_a_benchmark_an_emulated_variant_never_wins_on_agreement() -> None:
    base = _float()
    fp8 = _variant("fp8-max", _paired(base, 110, 100), 0.0, agreement=0.999, precision="fp8")
    fp8.fidelity = {"engine_graph": {"graph": "qdq", "why": "FP8 Q/DQ (ONNX Runtime CPU has no FP8 GEMM: emulated)"}}
    int8 = _variant("int8-max", _paired(base, 100, 100, offset=500), 0.0, agreement=0.95)
    variants = [_variant("float", base, 0.0, precision="float32"), fp8, int8]
    for v in variants:
        v.latency = []
    correct = {v.name: c for v, c in zip(variants, [base, _paired(base, 110, 100), _paired(base, 100, 100, offset=500)], strict=True)}
    sel = select_variant(variants, correct)
    assert sel.acceptable == ["fp8-max", "int8-max"] and sel.shape is None
    assert sel.winner == "int8-max" and "not emulated" in sel.rule


def test_a_variant_slower_than_float_is_not_eligible() -> None:
    base = _float()
    sel, *_ = _run({"fp8-max": (_paired(base, 120, 100), 50.0), "int8-max": (_paired(base, 100, 100, offset=500), 10.0)})
    assert sel.winner == "int8-max"
    assert next(s for s in sel.speed if s.name == "fp8-max").status == "slower"
    only, *_ = _run({"fp8-max": (_paired(base, 120, 100), 50.0)})
    assert only.outcome == "no speed-up" and only.warning and "slower" in only.warning


def test_float_reference_and_failed_rows_are_never_candidates() -> None:
    base = _float()
    correct = {"float": base, "ref:ort-static": _paired(base, 300, 0), "int8-broken": _paired(base, 300, 0, offset=500), "int8-max": base.copy()}
    ref = _variant("ref:ort-static", correct["ref:ort-static"], 5.0, reference=True)
    broken = _variant("int8-broken", correct["int8-broken"], 5.0)
    broken.status = "failed"
    variants = [_variant("float", base, 20.0, precision="float32", seed=0), ref, broken, _variant("int8-max", base.copy(), 9.0)]
    assert [v.name for v in candidates(variants)] == ["int8-max"]
    sel = select_variant(variants, correct)
    assert sel.winner == "int8-max" and [d.name for d in sel.accuracy] == ["int8-max"]


def test_the_baseline_is_a_parameter_so_another_float_row_can_plug_in() -> None:
    base = _float()
    bf16 = _variant("float-bf16", base, 10.0, precision="bf16", seed=0)
    f32 = _variant("float", base, 20.0, precision="float32", seed=0)
    int8 = _variant("int8-max", _paired(base, 100, 100), 6.0)
    variants = [f32, bf16, int8]
    assert accuracy_reference(variants, "float-bf16") is bf16 and speed_baseline(variants, "b32xs128", None, "float-bf16") is bf16
    assert [v.name for v in candidates(variants, "float-bf16")] == ["int8-max"]  # float rows of any precision are not candidates
    assert [v.name for v in candidates(variants)] == ["int8-max"]  # a bf16 float row beside the f32 baseline is not one either
    sel = select_variant(variants, {"float": base, "float-bf16": base, "int8-max": _paired(base, 100, 100)}, baseline="float-bf16")
    assert sel.baseline == "float-bf16" and sel.winner == "int8-max"
    assert next(s for s in sel.speed if s.name == "int8-max").versus == "float-bf16"


def _bf16_scenario(bf16_correct: np.ndarray, int8_ms: float) -> Any:
    base = _float()
    int8 = _paired(base, 100, 100)
    variants = [
        _variant("float", base, 20.0, precision="float32", seed=0),
        _variant("float-bf16@openvino", bf16_correct, 10.0, precision="float32", seed=0),
        _variant("int8-max", int8, int8_ms),
    ]
    return select_variant(variants, {"float": base, "float-bf16@openvino": bf16_correct, "int8-max": int8})


def test_the_speed_baseline_is_the_fastest_float_within_the_accuracy_margin() -> None:
    base = _float()
    # bf16 float as accurate as f32 and twice as fast: an INT8 variant 1.7x faster than f32 is slower than it
    sel = _bf16_scenario(_paired(base, 50, 50, offset=900), int8_ms=12.0)
    assert sel.float_baselines == ["float", "float-bf16@openvino"] and sel.speed_baseline == "float-bf16@openvino"
    assert sel.outcome == "no speed-up" and "float-bf16@openvino" in (sel.warning or "")
    assert next(s for s in sel.speed if s.name == "int8-max").versus == "float-bf16@openvino"
    # the same INT8 as fast as the bf16 float (within the speed margin) stays eligible
    assert _bf16_scenario(_paired(base, 50, 50, offset=900), int8_ms=10.0).outcome == "decided"


def test_a_float_row_that_loses_accuracy_is_no_speed_baseline() -> None:
    base = _float()
    sel = _bf16_scenario(_paired(base, 20, 320, offset=900), int8_ms=12.0)  # bf16 3 pts worse than f32
    assert sel.float_baselines == ["float"] and sel.speed_baseline == "float"
    assert [d.status for d in sel.float_accuracy] == ["inferior"]
    assert sel.outcome == "decided" and sel.winner == "int8-max"
    d = sel.to_dict()
    assert d["speed_baseline"] == "float" and d["float_accuracy"][0]["name"] == "float-bf16@openvino"


@pytest.mark.parametrize("order", [["int8-b", "int8-a"], ["int8-a", "int8-b"]])
def test_exact_ties_go_to_the_preferred_then_the_first_name(order: list[str]) -> None:
    base = _float()
    c = _paired(base, 100, 100)
    variants = [_variant("float", base, 20.0, precision="float32", seed=0), *(_variant(n, c, 10.0) for n in order)]
    correct = {"float": base, **{n: c for n in order}}
    assert select_variant(variants, correct).winner == "int8-a"
    assert select_variant(variants, correct, prefer="int8-b").winner == "int8-b"


def test_stopped_variants_are_inferior_and_paired_on_their_prefix() -> None:
    base = _float()
    stopped = _paired(base, 5, 20)[:2000]  # its evaluation stopped after 2,000 examples; its interval alone is undetermined
    good = _paired(base, 100, 100, offset=500)
    variants = [_variant("float", base, 20.0, precision="float32", seed=0), _variant("int8-stopped", stopped, 8.0), _variant("int8-good", good, 9.0, seed=2)]
    sel = select_variant(variants, {"float": base, "int8-stopped": stopped, "int8-good": good}, stopped={"int8-stopped": {"look": 1, "n": 2000}})
    d = next(x for x in sel.accuracy if x.name == "int8-stopped")
    assert d.high > -0.005  # the fixed-sample interval would not call it inferior: the sequential stop did
    assert d.n == 2000 and d.status == "inferior" and d.stopped == {"look": 1, "n": 2000}
    assert sel.winner == "int8-good"


def test_speed_resolution_waits_for_comparisons_that_cross_a_margin_edge() -> None:
    rng = np.random.default_rng(0)
    load = rng.uniform(1.0, 1.5, 40)
    samples = {
        "float": list(20.0 * load),
        "int8-a": list(10.0 * load * (1 + 0.002 * rng.standard_normal(40))),
        "int8-b": list(10.3 * load * (1 + 0.01 * rng.standard_normal(40))),  # 3 % slower: its interval crosses the edge
        "int8-c": list(10.05 * load * (1 + 0.002 * rng.standard_normal(40))),  # 0.5 % slower: inside the band
    }
    assert speed_resolution([], "float", samples, 0.03).resolved  # nothing acceptable: speed decides nothing
    assert speed_resolution(["int8-a", "int8-c"], "float", samples, 0.03).resolved
    res = speed_resolution(["int8-a", "int8-b"], "float", samples, 0.03)
    assert not res.resolved and res.pending == ["int8-b vs int8-a"]


def test_margin_sources_one_rule_with_and_without_a_search() -> None:
    from quant_workbench.config.recipe import recipe_from_dict

    base = {"name": "r", "model": {"source": "m"}, "data": {"files": ["x.csv"]}}
    assert accuracy_margin_for(recipe_from_dict(base), 0.7) == (0.005, "selection.accuracy_margin (default)")
    assert accuracy_margin_for(recipe_from_dict({**base, "selection": {"accuracy_margin": 0.01}}), 0.7)[0] == 0.01
    rel = recipe_from_dict({**base, "search": {"criterion": {"relative": 0.01}}})
    assert accuracy_margin_for(rel, 0.72)[0] == pytest.approx(0.0072) and "search criterion" in accuracy_margin_for(rel, 0.72)[1]
    ab = recipe_from_dict({**base, "search": {"criterion": {"absolute": 0.004}}})
    assert accuracy_margin_for(ab, 0.72)[0] == 0.004


def test_the_record_names_every_comparison_and_the_rule() -> None:
    base = _float()
    sel, *_ = _run({"int8-a": (_paired(base, 100, 100), 10.0), "int8-b": (_paired(base, 110, 90, offset=400), 10.2)})
    d = sel.to_dict()
    assert d["outcome"] == "decided" and d["comparisons"]["accuracy_family"] == 2
    assert [c["name"] for c in d["comparisons"]["accuracy"]] == ["int8-a", "int8-b"]
    assert d["tie_groups"] == {"accuracy": ["int8-a", "int8-b"], "speed": ["int8-a", "int8-b"]}
    assert "Holm" in d["rule"] and "0.50 pt" in d["rule"] and "Tango" in d["rule"]
