"""Noise-aware choice of the variant a run recommends.

The rule: among the quantized variants whose accuracy is statistically indistinguishable from the
most accurate one (exact McNemar on the same evaluation examples, at the recipe's level), take the
fastest; among those also indistinguishable from the fastest on speed (the interval of their p50
ratio, from interleaved samples, contains 1), take the one that agrees most with float.

Picking the highest point estimate instead lets a three-example difference decide; picking by speed
alone ignores accuracy. Float and reference rows (standard tools shown for comparison) are never
candidates but can still be compared against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .results import LatencyStats, VariantResult
from .stats import DEFAULT_LEVEL, paired_comparison, ratio_interval

RULE = (
    "among quantized variants that passed the fidelity checks and whose accuracy is statistically "
    "indistinguishable from the most accurate one (exact McNemar test on the paired evaluation examples, "
    "level {level:g}), the fastest (p50 at the largest benchmarked shape); among those also tied with it on "
    "speed (the {conf:g} % interval of their p50 ratio, from interleaved iterations, contains 1), the one that "
    "agrees most with float"
)
# With a search section the recipe states what accuracy is enough, so speed decides among what is enough.
CRITERION_RULE = (
    "search criterion {criterion}: among quantized variants (PTQ, search, QAT) that passed the fidelity checks "
    "and meet it on the evaluation split (accuracy >= {threshold}), the fastest (p50 at the largest benchmarked "
    "shape); among those tied with it on speed (the {conf:g} % interval of their p50 ratio contains 1), the most "
    "accurate, then the search's own choice, then the one that agrees most with float; if none meets it, "
    "the noise-aware rule: {fallback}"
)


@dataclass
class Selection:
    winner: str | None
    accuracy_tie_group: list[str] = field(default_factory=list)  # indistinguishable from the most accurate
    speed_tie_group: list[str] = field(default_factory=list)  # of those, tied with the fastest on speed
    most_accurate: str | None = None
    fastest: str | None = None
    shape: str | None = None  # latency key the speed was compared at
    level: float = DEFAULT_LEVEL
    reason: str = ""
    criterion: str | None = None  # the search criterion that decided, e.g. "relative drop <= 1 %"
    threshold: float | None = None  # the accuracy it asks for on this run's float model
    meeting: list[str] = field(default_factory=list)  # candidates that meet the criterion

    @property
    def rule(self) -> str:
        plain = RULE.format(level=self.level, conf=100 * (1 - self.level))
        if self.criterion is None:
            return plain
        return CRITERION_RULE.format(criterion=self.criterion, threshold=_pct(self.threshold), conf=100 * (1 - self.level), fallback=plain)

    def to_dict(self) -> dict[str, Any]:
        extra = {"criterion": self.criterion, "threshold": self.threshold, "meeting": self.meeting} if self.criterion is not None else {}
        return {
            **extra,
            "rule": self.rule, "level": self.level, "winner": self.winner,
            "most_accurate": self.most_accurate, "fastest": self.fastest, "shape": self.shape,
            "tie_groups": {"accuracy": self.accuracy_tie_group, "speed": self.speed_tie_group},
            "reason": self.reason,
        }


def _selection_shape(candidates: Sequence[VariantResult]) -> str | None:
    """The largest (batch, seq) every candidate was timed at: the throughput a deployment cares about."""
    common: set[tuple[int, int]] | None = None
    for v in candidates:
        shapes = {(s.batch_size, s.seq_length) for s in v.latency}
        common = shapes if common is None else common & shapes
    if not common:
        return None
    b, s = max(common)
    return f"b{b}xs{s}"


def _at(v: VariantResult, key: str) -> LatencyStats:
    return next(s for s in v.latency if s.key == key)


def _same_speed(a: LatencyStats, b: LatencyStats, level: float) -> bool:
    if a.samples_ms and len(a.samples_ms) == len(b.samples_ms):
        return ratio_interval(a.samples_ms, b.samples_ms, level).contains(1.0)
    return a.p50_ms == b.p50_ms  # no paired samples (e.g. an old report): only equal medians tie


def _same_accuracy(a: VariantResult, b: VariantResult, correct: Mapping[str, np.ndarray], level: float) -> bool:
    if a.name in correct and b.name in correct:
        return not paired_comparison(correct[a.name], correct[b.name], level).significant
    return a.metrics.get("accuracy") == b.metrics.get("accuracy")


def _speed_tie_group(group: Sequence[VariantResult], level: float) -> tuple[str | None, VariantResult | None, list[VariantResult]]:
    """The shape speed is compared at, the fastest of `group` there, and those tied with it on speed
    (the whole group, and no fastest, when some member was not timed at a common shape)."""
    shape = _selection_shape(group)
    if shape is None:
        return None, None, list(group)
    fastest = min(group, key=lambda v: (_at(v, shape).p50_ms, v.name))
    return shape, fastest, [v for v in group if v is fastest or _same_speed(_at(v, shape), _at(fastest, shape), level)]


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.2f} %"


def _candidates(variants: Sequence[VariantResult]) -> list[VariantResult]:
    return [v for v in variants if v.precision != "float32" and v.status == "ok" and not v.reference and "accuracy" in v.metrics]


def select_meeting_criterion(
    variants: Sequence[VariantResult],
    correct: Mapping[str, np.ndarray],
    threshold: float,
    criterion: str,
    level: float = DEFAULT_LEVEL,
    prefer: str | None = None,
) -> Selection:
    """CRITERION_RULE: the fastest candidate whose accuracy meets `threshold`; the noise-aware rule if none does.

    `prefer` (the search's own choice) wins exact ties on speed and accuracy, so that when the search's
    selection and another variant are the same configuration, the search's name is the one reported.
    """
    candidates = _candidates(variants)
    meeting = [v for v in candidates if v.metrics["accuracy"] >= threshold - 1e-12]
    if not meeting:
        fallback = select_variant(variants, correct, level)
        fallback.criterion, fallback.threshold = criterion, threshold
        fallback.reason = f"no candidate meets {criterion} (accuracy >= {_pct(threshold)}); " + fallback.reason
        return fallback
    names = lambda vs: [v.name for v in vs]  # noqa: E731
    tie_break = lambda v: (v.metrics["accuracy"], v.name == prefer, v.metrics.get("agreement", 0.0), _neg_name(v.name))  # noqa: E731
    shape, fastest, speed_group = _speed_tie_group(meeting, level)
    if shape is None or fastest is None:
        speed_text = "latency was not measured for all of them, so accuracy decides"
    else:
        speed_text = f"fastest at {shape}: {fastest.name} ({_at(fastest, shape).p50_ms:.2f} ms p50); tied with it on speed: {', '.join(names(speed_group))}"
    winner = max(speed_group, key=tie_break)
    reason = f"meet {criterion} (accuracy >= {_pct(threshold)}): {', '.join(names(meeting))}; {speed_text} -> {winner.name}, the most accurate of those."
    return Selection(
        winner=winner.name, accuracy_tie_group=names(meeting), speed_tie_group=names(speed_group),
        most_accurate=max(meeting, key=tie_break).name, fastest=fastest.name if fastest else None, shape=shape, level=level,
        reason=reason, criterion=criterion, threshold=threshold, meeting=names(meeting),
    )


def select_variant(
    variants: Sequence[VariantResult], correct: Mapping[str, np.ndarray], level: float = DEFAULT_LEVEL
) -> Selection:
    """Apply the rule above. `correct` maps a variant name to its per-example correctness (bool vector)."""
    candidates = _candidates(variants)
    if not candidates:
        return Selection(None, level=level, reason="no quantized variant was scored")
    # Name breaks exact ties so the choice never depends on the order variants were built in.
    top = max(candidates, key=lambda v: (v.metrics["accuracy"], v.metrics.get("agreement", 0.0), _neg_name(v.name)))
    acc_group = [v for v in candidates if v is top or _same_accuracy(v, top, correct, level)]
    shape, fastest, speed_group = _speed_tie_group(acc_group, level)
    if shape is None or fastest is None:
        speed_text = "latency was not measured for all of them, so speed could not break the tie"
    else:
        speed_text = f"fastest of those at {shape}: {fastest.name} ({_at(fastest, shape).p50_ms:.2f} ms p50)"
    winner = max(speed_group, key=lambda v: (v.metrics.get("agreement", 0.0), v.metrics["accuracy"], _neg_name(v.name)))
    names = lambda vs: [v.name for v in vs]  # noqa: E731
    reason = (
        f"most accurate: {top.name} ({_pct(top.metrics['accuracy'])}); statistically tied with it on accuracy "
        f"(level {level:g}): {', '.join(names(acc_group))}; {speed_text}"
    )
    if len(speed_group) > 1:
        reason += (
            f"; tied on speed with it: {', '.join(names(speed_group))}; {winner.name} agrees most with float "
            f"({_pct(winner.metrics.get('agreement'))})"
        )
    reason += f" -> {winner.name}."
    return Selection(
        winner=winner.name, accuracy_tie_group=names(acc_group), speed_tie_group=names(speed_group),
        most_accurate=top.name, fastest=fastest.name if fastest else None, shape=shape, level=level, reason=reason,
    )


def _neg_name(name: str) -> tuple[int, ...]:
    # max() with this key prefers the alphabetically first name among exact ties
    return tuple(-ord(c) for c in name)
