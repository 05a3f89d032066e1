"""Statistics on synthetic predictions and timings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from quant_workbench.stats import (
    macro_f1_interval,
    mcnemar_exact,
    median_interval,
    paired_comparison,
    prediction_statistics,
    ratio_interval,
    wilson_interval,
)


def _correct(n: int, right: int, seed: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[:right]] = True
    return out


def test_identical_predictions_give_a_zero_delta_interval() -> None:
    c = _correct(2000, 1440)
    cmp = paired_comparison(c, c.copy())
    assert (cmp.delta, cmp.delta_low, cmp.delta_high) == (0.0, 0.0, 0.0)
    assert cmp.discordant == 0 and cmp.p_value == 1.0 and not cmp.significant


def test_one_example_difference_is_a_tie() -> None:
    ref = _correct(2000, 1440)
    var = ref.copy()
    var[np.flatnonzero(~ref)[0]] = True  # the variant gets one more example right
    cmp = paired_comparison(var, ref)
    assert cmp.delta == pytest.approx(1 / 2000)
    assert cmp.only_variant_correct == 1 and cmp.only_reference_correct == 0
    assert not cmp.significant
    assert cmp.delta_low <= 0.0 <= cmp.delta_high


def test_large_difference_is_significant_and_its_interval_excludes_zero() -> None:
    ref = _correct(2000, 1440)
    var = ref.copy()
    var[np.flatnonzero(ref)[:60]] = False  # 60 examples lost, none gained: -3 points
    cmp = paired_comparison(var, ref)
    assert cmp.delta == pytest.approx(-0.03)
    assert cmp.significant and cmp.p_value < 1e-10
    assert cmp.delta_high < 0.0
    assert cmp.delta_low < cmp.delta < cmp.delta_high


def test_balanced_discordance_is_a_tie_even_when_many_examples_differ() -> None:
    ref = _correct(2000, 1440)
    var = ref.copy()
    var[np.flatnonzero(ref)[:50]] = False
    var[np.flatnonzero(~ref)[:50]] = True
    cmp = paired_comparison(var, ref)
    assert cmp.delta == 0.0 and cmp.discordant == 100
    assert not cmp.significant and cmp.delta_low < 0.0 < cmp.delta_high


def test_paired_interval_is_narrower_than_two_independent_intervals() -> None:
    # 3 % of examples discordant, as float vs INT8 in the default recipe: the pairing is the point.
    ref = _correct(2000, 1440)
    var = ref.copy()
    var[np.flatnonzero(ref)[:35]] = False
    var[np.flatnonzero(~ref)[:25]] = True
    cmp = paired_comparison(var, ref)
    lo, hi = wilson_interval(int(var.sum()), 2000)
    assert (cmp.delta_high - cmp.delta_low) < 0.5 * (hi - lo)


def test_mcnemar_exact_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # 2 * 0.5**6
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(3, 10) == mcnemar_exact(10, 3)


def test_wilson_interval_known_values_and_bounds() -> None:
    lo, hi = wilson_interval(1442, 2000)  # 72.1 %: about ±2 points
    assert lo == pytest.approx(0.7010, abs=5e-4) and hi == pytest.approx(0.7401, abs=5e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_macro_f1_interval_brackets_sklearn_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 1000)
    pred = np.where(rng.random(1000) < 0.7, labels, rng.integers(0, 3, 1000))
    point = f1_score(labels, pred, average="macro")
    lo, hi = macro_f1_interval(labels, pred)
    assert lo < point < hi and hi - lo < 0.1
    assert (lo, hi) == macro_f1_interval(labels, pred)
    perfect = macro_f1_interval(labels, labels)
    assert perfect == (1.0, 1.0)


def test_prediction_statistics_counts_disagreements_separately_from_discordance() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    ref = np.array([0, 1, 2, 0, 1, 2, 1, 2])  # 6 right
    var = np.array([0, 1, 2, 0, 1, 0, 2, 2])  # 5 right; differs from ref on 2 examples, both wrong at #6
    out = prediction_statistics(var, labels, ref)
    vs = out["vs_float"]
    assert vs["disagreements"] == 2
    assert vs["only_reference_correct"] == 1 and vs["only_variant_correct"] == 0
    assert vs["delta"] == pytest.approx(-1 / 8)
    assert out["n"] == 8 and out["accuracy"][0] < 5 / 8 < out["accuracy"][1]
    assert "vs_float" not in prediction_statistics(ref, labels, None)


def test_median_interval_contains_the_median_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small = 10 + rng.exponential(1.0, 30)
    large = 10 + rng.exponential(1.0, 3000)
    lo_s, hi_s = median_interval(small)
    lo_l, hi_l = median_interval(large)
    assert lo_s <= np.median(small) <= hi_s
    assert lo_l <= np.median(large) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert median_interval([5.0] * 20) == (5.0, 5.0)


def test_ratio_interval_keeps_rounds_paired() -> None:
    # Every round is slowed by the same machine-wide factor: the paired ratio stays exactly 2.
    load = np.random.default_rng(0).uniform(1.0, 4.0, 200)
    slow, fast = 20.0 * load, 10.0 * load
    r = ratio_interval(slow, fast)
    assert r.ratio == pytest.approx(2.0)
    assert r.low == pytest.approx(2.0) and r.high == pytest.approx(2.0)
    assert r.relative_half_width == pytest.approx(0.0, abs=1e-12)
    shuffled = ratio_interval(slow, np.random.default_rng(1).permutation(fast))
    assert shuffled.relative_half_width > 0.05  # unpaired, the same samples say much less
    with pytest.raises(ValueError):
        ratio_interval(slow, fast[:-1])
