"""Uncertainty of the numbers a report compares: accuracy, macro-F1, paired differences, latency.

Everything here is a pure function of predictions or timing samples (numpy + scipy), deterministic
for a given seed, so the same run always reports the same intervals.

- Accuracy: Wilson score interval (exact enough at n >= 100 and never outside [0, 1]).
- Macro-F1: bootstrap over examples. Resampling n examples with replacement is the same as drawing
  the confusion matrix from a multinomial with the observed cell frequencies, which costs O(classes²)
  per resample instead of O(n).
- Difference to a reference on the same examples: paired. Only examples where exactly one of the two
  is right (the discordant pairs) carry information; the exact McNemar test decides whether the two
  differ, and a paired bootstrap (the same multinomial trick on the three pair kinds) gives the
  interval on Δ. Identical correctness gives Δ = 0 with the interval exactly [0, 0].
- Latency: percentile bootstrap of the median over timed iterations; a speed-up is the ratio of two
  medians, resampled by *iteration index* because interleaved runners were timed in the same round
  and share that round's machine state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize as _scipy_optimize
from scipy import stats as _scipy_stats

DEFAULT_LEVEL = 0.05  # two-sided: 95 % intervals, tests at 5 %
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [level / 2.0, 1.0 - level / 2.0])
    return float(lo), float(hi)


def wilson_interval(successes: int, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n."""
    _check_level(level)
    if n <= 0:
        raise ValueError("an interval needs at least one example")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = float(_scipy_stats.norm.ppf(1.0 - level / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # The endpoints are exactly 0 / 1 at p = 0 / 1 (the formula leaves rounding error there).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _macro_f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices (..., k, k) with rows = true class; 0/0 counts as 0 (sklearn's default)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    fp = conf.sum(axis=-2) - tp
    fn = conf.sum(axis=-1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return np.asarray(f1.mean(axis=-1))


def macro_f1_interval(
    labels: np.ndarray,
    pred: np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Bootstrap interval of macro-F1 over examples (classes = those seen in labels or predictions)."""
    _check_level(level)
    labels, pred = np.asarray(labels), np.asarray(pred)
    if labels.shape != pred.shape or labels.size == 0:
        raise ValueError("labels and predictions must be non-empty and of one length")
    classes, inverse = np.unique(np.concatenate([labels, pred]), return_inverse=True)
    k, n = len(classes), len(labels)
    cells = inverse[:n] * k + inverse[n:]
    counts = np.bincount(cells, minlength=k * k)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=resamples).reshape(resamples, k, k)
    return _percentile_interval(_macro_f1_from_confusion(draws), level)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: is `only_a` vs `only_b` (the discordant pairs) a fair coin?"""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be non-negative")
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = float(_scipy_stats.binom.cdf(min(only_a, only_b), m, 0.5))
    return min(1.0, 2.0 * tail)


def _z(level: float) -> float:
    """The two-sided critical value of a (1 - level) interval."""
    return float(_scipy_stats.norm.ppf(1.0 - level / 2.0))


def tango_statistic(only_variant: int, only_reference: int, n: int, delta0: float) -> float:
    """Tango's (1998) score statistic of H0: Δ = delta0 for a paired difference of proportions.

    Δ = p10 - p01 (variant right and reference wrong, minus the reverse). The variance is evaluated at
    the constrained maximum-likelihood estimate of p01 under H0, which is what keeps the interval from
    collapsing when few or no pairs are discordant. At delta0 = 0 it is McNemar's statistic
    (b - c) / sqrt(b + c). Large values favour Δ > delta0.
    """
    b, c = only_variant, only_reference
    if n <= 0:
        raise ValueError("a paired statistic needs at least one example")
    d = float(delta0)
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * d
    c_ = -c * d * (1.0 - d)
    p01 = (-b_ + math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0))) / (2.0 * a_)
    var = n * (2.0 * p01 + d * (1.0 - d))
    num = b - c - n * d
    if var <= 1e-15 * n:
        return 0.0 if abs(num) < 1e-12 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_interval(only_variant: int, only_reference: int, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Tango's score interval for a paired difference of proportions: {δ : |T(δ)| <= z}.

    Unlike a bootstrap over examples, zero discordant pairs do not give a zero-width interval: with
    b = c = 0 it is ±z² / (n + z²) (±0.38 point at n = 1,000).
    """
    _check_level(level)
    z = _z(level)
    point = (only_variant - only_reference) / n
    eps = 1e-12

    def root(target: float, lo: float, hi: float) -> float:
        f = lambda d: tango_statistic(only_variant, only_reference, n, d) - target  # noqa: E731
        return float(_scipy_optimize.brentq(f, lo, hi, xtol=1e-12))

    low = -1.0 if tango_statistic(only_variant, only_reference, n, -1.0 + eps) <= z else root(z, -1.0 + eps, point)
    high = 1.0 if tango_statistic(only_variant, only_reference, n, 1.0 - eps) >= -z else root(-z, point, 1.0 - eps)
    return low, high


def noninferiority_p(only_variant: int, only_reference: int, n: int, margin: float) -> float:
    """One-sided p-value of H0: Δ <= -margin against H1: Δ > -margin (Tango's score test).

    p < level / 2 exactly when the (1 - level) Tango interval's lower bound lies above -margin.
    """
    t = tango_statistic(only_variant, only_reference, n, -margin)
    return float(_scipy_stats.norm.sf(t))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): reject H_i at level a when adjusted p_i <= a."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    out = [0.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        out[i] = running
    return out


def required_size(discordance: float, half_width: float, level: float = DEFAULT_LEVEL) -> int:
    """Evaluation size whose paired interval on Δ has about this half-width: n = (z / h)² · q.

    Normal approximation of the paired difference: var(Δ) ≈ q / n when the net difference is small
    next to the discordance rate q (bench/eval_size.py and the selection's "undetermined" both use it).
    """
    _check_level(level)
    if half_width <= 0:
        raise ValueError(f"half_width must be positive, got {half_width}")
    return math.ceil((_z(level) / half_width) ** 2 * max(discordance, 0.0))


def size_to_decide(delta: float, discordance: float, margin: float, level: float = DEFAULT_LEVEL) -> int | None:
    """Evaluation size at which an observed Δ would be resolved against -margin (its interval would end on
    one side of it), if Δ and the discordance rate stayed as observed; None when Δ sits on the margin."""
    distance = abs(delta + margin)
    if distance <= 1e-12:
        return None
    return required_size(max(discordance, 1e-6), distance, level)


@dataclass(frozen=True)
class PairedComparison:
    """Variant vs reference on the same examples; Δ = accuracy(variant) - accuracy(reference)."""

    n: int
    delta: float
    delta_low: float
    delta_high: float
    only_variant_correct: int  # discordant pairs in the variant's favour
    only_reference_correct: int
    p_value: float  # exact McNemar
    level: float
    method: str = "tango"

    @property
    def discordant(self) -> int:
        return self.only_variant_correct + self.only_reference_correct

    @property
    def significant(self) -> bool:
        return self.p_value < self.level

    def noninferiority_p(self, margin: float) -> float:
        return noninferiority_p(self.only_variant_correct, self.only_reference_correct, self.n, margin)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "discordant": self.discordant, "significant": self.significant}


INTERVAL_METHOD = (
    "Tango's score interval for a paired difference of proportions, extended to include 0 when the exact "
    "McNemar test does not reject, so the interval excludes 0 exactly when the test says the two differ"
)


def paired_comparison(correct: np.ndarray, reference_correct: np.ndarray, level: float = DEFAULT_LEVEL) -> PairedComparison:
    """Paired Δ accuracy with Tango's score interval and the exact McNemar test, from per-example correctness.

    The score (asymptotic) test behind Tango's interval rejects whenever the exact McNemar test does
    (checked in the tests for every split of up to 1,000 discordant pairs), but not the other way round
    with few discordant pairs (5 vs 0: the score test rejects, exact p = 0.0625). Where they disagree the
    interval is extended to reach 0, so the reported interval and the reported test never contradict.
    """
    _check_level(level)
    a = np.asarray(correct, dtype=bool)
    r = np.asarray(reference_correct, dtype=bool)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired correctness must be two non-empty vectors of one length, got {a.shape} and {r.shape}")
    n = int(a.size)
    b = int(np.sum(a & ~r))
    c = int(np.sum(~a & r))
    p = mcnemar_exact(b, c)
    lo, hi = tango_interval(b, c, n, level)
    if p >= level:  # the exact test does not reject: neither may the interval
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return PairedComparison(
        n=n, delta=(b - c) / n, delta_low=lo, delta_high=hi,
        only_variant_correct=b, only_reference_correct=c, p_value=p, level=level,
    )


def prediction_statistics(
    pred: np.ndarray,
    labels: np.ndarray,
    reference_pred: np.ndarray | None,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Intervals of one variant's predictions, as plain numbers for report.json.

    {"level", "n", "accuracy": [lo, hi], "macro_f1": [lo, hi], "vs_float": {...PairedComparison,
    "disagreements": predictions that differ from the reference's}} (vs_float only with a reference).
    `pred` may cover fewer examples than `labels` / `reference_pred` (a variant whose evaluation stopped
    early): it scores the first len(pred) examples, and the paired comparison uses exactly those.
    """
    pred = np.asarray(pred)
    n = int(pred.size)
    labels = np.asarray(labels)[:n]
    correct = pred == labels
    out: dict[str, Any] = {
        "level": level,
        "n": n,
        "accuracy": list(wilson_interval(int(correct.sum()), n, level)),
        "macro_f1": list(macro_f1_interval(labels, pred, level, seed=seed)),
    }
    if reference_pred is not None:
        reference_pred = np.asarray(reference_pred)[:n]
        cmp = paired_comparison(correct, reference_pred == labels, level)
        out["vs_float"] = {**cmp.to_dict(), "disagreements": int(np.sum(pred != reference_pred))}
    return out


# ---------------------------------------------------------------------------------------------
# timing: rounds drift (another tenant, thermal state), so resampling keeps neighbouring rounds together


def block_length(n: int) -> int:
    """Moving-block length for n rounds: about n^(1/3), the usual order for a median or quantile."""
    return max(1, int(round(n ** (1.0 / 3.0))))


def _block_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """Circular moving-block bootstrap indices (resamples, n): runs of consecutive rounds."""
    size = block_length(n)
    blocks = -(-n // size)
    starts = np.random.default_rng(seed).integers(0, n, size=(resamples, blocks))
    idx = (starts[:, :, None] + np.arange(size)) % n
    return idx.reshape(resamples, -1)[:, :n]


def median_interval(
    samples: Sequence[float] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Block-bootstrap interval of the median of timing samples taken in round order."""
    _check_level(level)
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    return _percentile_interval(np.median(x[_block_indices(x.size, resamples, seed)], axis=1), level)


@dataclass(frozen=True)
class RatioInterval:
    ratio: float  # median over rounds of numerator_i / denominator_i
    low: float
    high: float

    @property
    def relative_half_width(self) -> float:
        """The larger distance of an endpoint from the ratio, as a fraction of it (0.05 = ±5 %)."""
        if self.ratio <= 0 or not math.isfinite(self.ratio):
            return float("inf")
        return max(self.high / self.ratio - 1.0, 1.0 - self.low / self.ratio)

    def versus_margin(self, margin: float) -> str:
        """Where the interval lies against the band [1/(1+margin), 1+margin]: "equivalent" (inside it),
        "above" / "below" (entirely outside it), or "undetermined" (it crosses an edge)."""
        top, bottom = 1.0 + margin, 1.0 / (1.0 + margin)
        if bottom <= self.low and self.high <= top:
            return "equivalent"
        if self.low > top:
            return "above"
        if self.high < bottom:
            return "below"
        return "undetermined"


_TINY_S = 1e-9  # a timed call never takes 0 s; keeps logs finite for no-op runners in tests


def _log_ratios(numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] | np.ndarray) -> np.ndarray:
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"paired timing samples must be two non-empty vectors of one length, got {num.shape} and {den.shape}")
    return np.asarray(np.log(np.maximum(num, _TINY_S)) - np.log(np.maximum(den, _TINY_S)))


def median_ratio(numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] | np.ndarray) -> float:
    """The median over rounds of numerator_i / denominator_i (the point estimate of ratio_interval)."""
    return float(np.exp(np.median(_log_ratios(numerator, denominator))))


def ratio_interval(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> RatioInterval:
    """Median per-round ratio numerator_i / denominator_i of samples taken in the same rounds, with a
    moving-block bootstrap interval over rounds.

    Speed-up vs float = ratio_interval(float samples, variant samples). Each round's ratio cancels what
    the round shared (another tenant, a slow stretch, drift), and resampling blocks of neighbouring
    rounds keeps what is left of that drift's correlation in the interval.
    """
    _check_level(level)
    logs = _log_ratios(numerator, denominator)
    point = float(np.exp(np.median(logs)))
    lo, hi = _percentile_interval(np.median(logs[_block_indices(logs.size, resamples, seed)], axis=1), level)
    return RatioInterval(point, float(np.exp(lo)), float(np.exp(hi)))


# ---------------------------------------------------------------------------------------------
# sequential looks: alpha spent over a fixed number of looks


def pocock_spending(t: float, alpha: float) -> float:
    """Lan-DeMets Pocock-type spending function: alpha * ln(1 + (e - 1) t), the alpha spent by information fraction t."""
    return alpha * math.log(1.0 + (math.e - 1.0) * min(max(t, 0.0), 1.0))


def spending_boundaries(fractions: Sequence[float], alpha: float, grid: int = 1201) -> list[float]:
    """One-sided group-sequential critical values c_k: stop at look k when Z_k >= c_k, where Z_k is a
    standardized statistic at information fraction t_k. P(any crossing | H0) = alpha, spent over the
    looks by the Pocock-type function (most of it available early, which is the point of looking).

    Exact for Brownian-motion statistics (recursive numerical integration of the density of paths that
    have not crossed, on a fixed grid): deterministic, no simulation.
    """
    ts = [float(t) for t in fractions]
    if not ts or any(b <= a for a, b in zip(ts, ts[1:], strict=False)) or ts[0] <= 0 or ts[-1] > 1 + 1e-12:
        raise ValueError(f"information fractions must increase within (0, 1], got {ts}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    norm = _scipy_stats.norm
    out: list[float] = []
    spent = 0.0
    # sub-density of S(t) = Z * sqrt(t) over paths that have not crossed, on a grid
    x: np.ndarray | None = None
    dens: np.ndarray | None = None
    t_prev = 0.0
    for t in ts:
        target = pocock_spending(t, alpha) - spent
        if x is None or dens is None:
            c = float(norm.isf(target))
        else:
            sd = math.sqrt(t - t_prev)
            w = np.gradient(x) * dens  # trapezoid-like weights of the surviving mass

            def excess(c_: float, w: np.ndarray = w, x: np.ndarray = x, sd: float = sd, t: float = t, target: float = target) -> float:
                return float(np.sum(w * norm.sf((c_ * math.sqrt(t) - x) / sd))) - target

            c = float(_scipy_optimize.brentq(excess, -10.0, 40.0, xtol=1e-10))
        out.append(c)
        spent += target
        # propagate the surviving paths to t (below the boundary c * sqrt(t))
        upper = c * math.sqrt(t)
        new_x = np.linspace(-10.0 * math.sqrt(t) - 1.0, upper, grid)
        if x is None or dens is None:
            new_dens = norm.pdf(new_x / math.sqrt(t)) / math.sqrt(t)
        else:
            sd = math.sqrt(t - t_prev)
            w = np.gradient(x) * dens
            new_dens = (norm.pdf((new_x[:, None] - x[None, :]) / sd) / sd) @ w
        x, dens, t_prev = new_x, new_dens, t
    return out


def interval_metrics(statistics: dict[str, Any]) -> dict[str, float]:
    """prediction_statistics flattened to the float-valued metric names a search trial records."""
    out = {
        "examples": float(statistics["n"]),
        "accuracy_low": float(statistics["accuracy"][0]), "accuracy_high": float(statistics["accuracy"][1]),
        "macro_f1_low": float(statistics["macro_f1"][0]), "macro_f1_high": float(statistics["macro_f1"][1]),
    }
    cmp = statistics.get("vs_float")
    if cmp:
        out.update(
            delta_vs_float=float(cmp["delta"]), delta_low=float(cmp["delta_low"]), delta_high=float(cmp["delta_high"]),
            discordant=float(cmp["discordant"]), disagreements=float(cmp["disagreements"]), p_value=float(cmp["p_value"]),
        )
    return out

