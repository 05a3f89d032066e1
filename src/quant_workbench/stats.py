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

    @property
    def discordant(self) -> int:
        return self.only_variant_correct + self.only_reference_correct

    @property
    def significant(self) -> bool:
        return self.p_value < self.level

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "discordant": self.discordant, "significant": self.significant}


def paired_comparison(
    correct: np.ndarray,
    reference_correct: np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Paired Δ accuracy with a bootstrap interval and the exact McNemar test, from per-example correctness."""
    _check_level(level)
    a = np.asarray(correct, dtype=bool)
    r = np.asarray(reference_correct, dtype=bool)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired correctness must be two non-empty vectors of one length, got {a.shape} and {r.shape}")
    n = int(a.size)
    b = int(np.sum(a & ~r))
    c = int(np.sum(~a & r))
    rng = np.random.default_rng(seed)
    # Resampling examples only changes how many of each pair kind (+1, -1, 0) are drawn.
    draws = rng.multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    deltas = (draws[:, 0] - draws[:, 1]) / n
    lo, hi = _percentile_interval(deltas, level)
    return PairedComparison(
        n=n, delta=(b - c) / n, delta_low=lo, delta_high=hi,
        only_variant_correct=b, only_reference_correct=c, p_value=mcnemar_exact(b, c), level=level,
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
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    correct = pred == labels
    out: dict[str, Any] = {
        "level": level,
        "n": int(correct.size),
        "accuracy": list(wilson_interval(int(correct.sum()), int(correct.size), level)),
        "macro_f1": list(macro_f1_interval(labels, pred, level, seed=seed)),
    }
    if reference_pred is not None:
        reference_pred = np.asarray(reference_pred)
        cmp = paired_comparison(correct, reference_pred == labels, level, seed=seed)
        out["vs_float"] = {**cmp.to_dict(), "disagreements": int(np.sum(pred != reference_pred))}
    return out


def median_interval(
    samples: Sequence[float] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of timing samples."""
    _check_level(level)
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return _percentile_interval(np.median(x[idx], axis=1), level)


@dataclass(frozen=True)
class RatioInterval:
    ratio: float  # median(numerator) / median(denominator)
    low: float
    high: float

    @property
    def relative_half_width(self) -> float:
        """The larger distance of an endpoint from the ratio, as a fraction of it (0.05 = ±5 %)."""
        if self.ratio <= 0 or not math.isfinite(self.ratio):
            return float("inf")
        return max(self.high / self.ratio - 1.0, 1.0 - self.low / self.ratio)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def ratio_interval(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> RatioInterval:
    """Interval of median(numerator) / median(denominator) for samples taken in the same rounds.

    Speed-up vs float = ratio_interval(float samples, variant samples). Both are resampled with the
    same iteration indices: a round slowed by another tenant slows both, and the ratio keeps that pairing.
    """
    _check_level(level)
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"paired timing samples must be two non-empty vectors of one length, got {num.shape} and {den.shape}")
    point = float(np.median(num) / np.median(den))
    idx = np.random.default_rng(seed).integers(0, num.size, size=(resamples, num.size))
    ratios = np.median(num[idx], axis=1) / np.median(den[idx], axis=1)
    lo, hi = _percentile_interval(ratios, level)
    return RatioInterval(point, lo, hi)


def interval_metrics(statistics: dict[str, Any]) -> dict[str, float]:
    """prediction_statistics flattened to the float-valued metric names a search trial records."""
    out = {
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
