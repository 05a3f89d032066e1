"""Statistics on synthetic predictions and timings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from quant_workbench.measure.stats import (
    block_length,
    holm,
    macro_f1_interval,
    mcnemar_exact,
    median_interval,
    noninferiority_p,
    paired_comparison,
    prediction_statistics,
    ratio_interval,
    required_size,
    size_to_decide,
    spending_boundaries,
    tango_interval,
    tango_statistic,
    wilson_interval,
)


def _correct(n: int, right: int, seed: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[:right]] = True
    return out


def test_identical_predictions_do_not_give_a_zero_width_interval() -> None:
    # zero discordant pairs say the discordance is small, not zero: at n = 2,000, Δ may still be ±0.19 point
    c = _correct(2000, 1440)
    cmp = paired_comparison(c, c.copy())
    z2 = 1.959963984540054**2
    assert cmp.delta == 0.0 and cmp.discordant == 0 and cmp.p_value == 1.0 and not cmp.significant
    assert cmp.delta_low == pytest.approx(-z2 / (2000 + z2)) and cmp.delta_high == pytest.approx(z2 / (2000 + z2))
    assert cmp.method == "tango"


def test_five_to_zero_discordant_pairs_interval_agrees_with_exact_mcnemar() -> None:
    # the case: 5 vs 0 at n = 1,000; the score interval alone excludes 0, exact McNemar p = 0.0625
    ref = _correct(1000, 700)
    var = ref.copy()
    var[np.flatnonzero(~ref)[:5]] = True
    cmp = paired_comparison(var, ref)
    assert cmp.p_value == pytest.approx(0.0625) and not cmp.significant
    assert tango_interval(5, 0, 1000)[0] > 0  # what the interval would say on its own
    assert cmp.delta_low == 0.0 and cmp.delta_high > 0.005  # extended to reach 0: interval and test agree


def test_interval_excludes_zero_exactly_when_exact_mcnemar_rejects() -> None:
    n = 1000
    for m in range(0, 121):
        for b in range(0, m + 1):
            c = m - b
            var = np.zeros(n, dtype=bool)
            ref = np.zeros(n, dtype=bool)
            var[:b] = True
            ref[b : b + c] = True
            cmp = paired_comparison(var, ref)
            excludes = cmp.delta_low > 0 or cmp.delta_high < 0
            assert excludes == cmp.significant, (b, c, cmp)
            if cmp.significant:  # the score interval itself already excluded 0 (no extension needed)
                lo, hi = tango_interval(b, c, n)
                assert lo > 0 or hi < 0, (b, c)


def test_tango_endpoints_solve_the_score_equation_and_zero_gives_mcnemar() -> None:
    b, c, n = 37, 18, 1500
    lo, hi = tango_interval(b, c, n)
    assert tango_statistic(b, c, n, lo) == pytest.approx(1.959964, abs=1e-6)
    assert tango_statistic(b, c, n, hi) == pytest.approx(-1.959964, abs=1e-6)
    assert tango_statistic(b, c, n, 0.0) == pytest.approx((b - c) / np.sqrt(b + c))
    assert lo < (b - c) / n < hi


def test_tango_interval_covers_at_its_level() -> None:
    # paired data with 2 % / 3 % discordance at n = 400: a nominal 95 % interval should cover Δ = -1 point
    rng = np.random.default_rng(3)
    n, p10, p01, hits, sims = 400, 0.02, 0.03, 0, 1500
    for _ in range(sims):
        b, c, _ = rng.multinomial(n, [p10, p01, 1 - p10 - p01])
        lo, hi = tango_interval(int(b), int(c), n)
        hits += lo <= p10 - p01 <= hi
    assert 0.93 <= hits / sims <= 0.98


def test_noninferiority_p_matches_the_interval_lower_bound() -> None:
    for b, c, n in [(30, 50, 2000), (10, 40, 2000), (20, 21, 800)]:
        lo, _ = tango_interval(b, c, n)
        for margin in (0.005, 0.01, 0.02):
            assert (noninferiority_p(b, c, n, margin) < 0.025) == (lo > -margin), (b, c, n, margin)


def test_holm_step_down_values() -> None:
    # sorted 0.01 (x4), 0.03 (x3), 0.04 (x2, kept monotone at 0.09), 0.5 (x1)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.02, 0.011]) == pytest.approx([0.022, 0.022])  # monotone: a later step never rejects more easily


def test_required_size_is_the_readme_formula() -> None:
    # README "Evaluation size": q = 2.80 % at ±0.5 point needs about 4,300 examples
    assert required_size(0.028, 0.005) == 4303
    assert required_size(0.0595, 0.005) == 9143
    with pytest.raises(ValueError):
        required_size(0.03, 0.0)
    # resolving Δ = -0.12 pt against a 0.5 pt margin: the interval must shrink to ±0.38 pt
    assert size_to_decide(-0.0012, 0.026, 0.005) == required_size(0.026, 0.0038)
    assert size_to_decide(-0.005, 0.03, 0.005) is None


def test_spending_boundaries_spend_exactly_alpha() -> None:
    fractions = [0.2, 0.4, 0.6, 0.8, 1.0]
    c = spending_boundaries(fractions, 0.025)
    # Lan-DeMets Pocock-type, one-sided 2.5 %, five equal looks (published: 2.44, 2.43, 2.41, 2.40, 2.39)
    assert c == pytest.approx([2.438, 2.428, 2.412, 2.400, 2.390], abs=2e-3)
    rng = np.random.default_rng(0)
    s = np.cumsum(rng.standard_normal((200_000, 5)) * np.sqrt(0.2), axis=1)
    crossed = (s / np.sqrt(fractions) >= np.array(c)).any(axis=1).mean()
    assert crossed == pytest.approx(0.025, abs=0.0015)
    assert spending_boundaries([1.0], 0.025) == pytest.approx([1.959964], abs=1e-5)
    with pytest.raises(ValueError):
        spending_boundaries([0.5, 0.4], 0.025)


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


def test_ratio_is_the_median_of_per_round_ratios_not_the_ratio_of_medians() -> None:
    num = [1.0, 2.0, 3.0, 4.0, 5.0]
    den = [1.0, 1.0, 1.0, 8.0, 9.0]  # per-round ratios 1, 2, 3, 0.5, 0.56: median 1; medians' ratio 3
    assert ratio_interval(num, den).ratio == pytest.approx(1.0)


def test_ratio_interval_resamples_blocks_of_neighbouring_rounds() -> None:
    # per-round ratios that wander (a slow drift of one runner): neighbouring rounds carry the same drift, so
    # they are worth less than independent rounds; an i.i.d. bootstrap would give the shuffled series' width
    rng = np.random.default_rng(5)
    wander = np.zeros(300)
    for i in range(1, 300):
        wander[i] = 0.95 * wander[i - 1] + 0.02 * rng.standard_normal()
    base = 10.0 * rng.uniform(1.0, 1.2, 300)
    variant = base * np.exp(wander)
    ordered = ratio_interval(base, variant)
    shuffled_idx = np.random.default_rng(1).permutation(300)
    shuffled = ratio_interval(base[shuffled_idx], variant[shuffled_idx])
    assert block_length(300) > 1
    assert (ordered.high - ordered.low) > 1.5 * (shuffled.high - shuffled.low)


def test_versus_margin_places_an_interval_against_the_band() -> None:
    from quant_workbench.measure.stats import RatioInterval

    assert RatioInterval(1.01, 0.99, 1.02).versus_margin(0.03) == "equivalent"
    assert RatioInterval(1.10, 1.05, 1.15).versus_margin(0.03) == "above"
    assert RatioInterval(0.80, 0.75, 0.85).versus_margin(0.03) == "below"
    assert RatioInterval(1.02, 1.00, 1.05).versus_margin(0.03) == "undetermined"


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
