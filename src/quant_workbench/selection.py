"""The variant a run recommends: decided by practical margins, not by significance (docs/decisions.md).

One rule, with or without a search (a search's criterion is where the accuracy margin comes from):

1. Candidates (`candidates`): quantized variants that passed every gate (status ok) and were scored;
   float rows and the standard tools' reference rows are never candidates.
2. Acceptable: the paired Δ accuracy vs the float reference (`accuracy_reference`) is non-inferior at
   the accuracy margin m: Tango's score test of H0 Δ <= -m rejects at one-sided level/2 after Holm's
   adjustment over all candidates (with one candidate: the (1 - level) interval's lower bound >= -m).
3. Eligible (with a benchmark): not slower than the speed baseline (`speed_baseline`) beyond the speed
   margin s (its latency-ratio interval lies above 1 + s). The speed baseline is the fastest float row at
   the selection shape among the accuracy reference and the other float rows (bf16, another engine's
   float) that are non-inferior to it at the accuracy margin (`float_baselines`): a user would ship such a
   float instead of a quantized model that is not faster. Without a benchmark: not emulated.
4. Among eligible acceptable candidates the fastest at the selection shape; every one whose latency ratio
   to it is not above 1 + s with confidence (equivalent within the margin, or unresolved) is as fast:
   among those, the most accurate, then the one agreeing most with float, then the search's own choice,
   then the first name.
5. Nothing acceptable: "undetermined" when some candidate could still be within the margin (the most
   accurate of those is recommended and the evaluation size that would decide is named), "none within the
   margin" when every candidate is inferior (the most accurate is recommended); both are warnings.

Accuracy orderings are reproducible (same data, same engines); only speed is noisy, so timing noise can
move a variant in or out of the speed group only when its ratio to the fastest hovers at the margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from quant_workbench.config.recipe import DEFAULT_ACCURACY_MARGIN, DEFAULT_SPEED_MARGIN
from quant_workbench.core.results import (
    BASELINE,
    FLOAT_PRECISIONS,
    LatencyStats,
    VariantResult,
    accuracy_reference,
    variant_named,
)
from quant_workbench.measure.stats import (
    DEFAULT_LEVEL,
    INTERVAL_METHOD,
    holm,
    paired_comparison,
    ratio_interval,
    required_size,
)
from quant_workbench.report.format import pct

if TYPE_CHECKING:
    from quant_workbench.measure.latency import Resolution


RULE = (
    "candidates: quantized variants that passed every gate (float and reference rows never are). Acceptable: "
    "paired Δ accuracy vs {baseline} non-inferior at the accuracy margin {margin_pts} ({margin_source}): Tango's score "
    "test of Δ <= -{margin_pts} rejected at one-sided {half:g} after Holm's adjustment over the {k} candidate(s) "
    "(for one candidate: the {conf:g} % interval's lower bound >= -{margin_pts}). Among acceptable candidates not "
    "slower than the speed baseline beyond the speed margin {speed:g} % (the fastest float row at that shape among {baseline} "
    "and the float rows, e.g. bf16 or another engine's, non-inferior to it at the accuracy margin), the fastest (median per-round latency ratio at the "
    "largest benchmarked shape); those whose latency ratio to it is not above {top:.2f} with {conf:g} % confidence "
    "(equivalent within the margin, or unresolved) count as equally fast and are decided by accuracy, then agreement "
    "with {baseline}, then the search's own choice, then the name. Without a benchmark, the most accurate acceptable "
    "candidate that is not emulated. Nothing acceptable: 'undetermined' (the most accurate candidate that could still "
    "be within the margin is recommended and the evaluation size that would decide is named) or 'none within the "
    "margin' (the most accurate is recommended)"
)


# ---------------------------------------------------------------------------------------------
# which rows play which part


def float_rows(variants: Sequence[VariantResult], baseline: str = BASELINE) -> list[VariantResult]:
    """The float rows besides the accuracy reference (the float model on another engine or in bf16), ok and scored."""
    return [
        v for v in variants
        if v.name != baseline and v.precision in FLOAT_PRECISIONS and v.status == "ok" and not v.reference and "accuracy" in v.metrics
    ]


def float_baselines(
    variants: Sequence[VariantResult],
    correct: Mapping[str, np.ndarray],
    margin: float,
    level: float = DEFAULT_LEVEL,
    stopped: Mapping[str, dict[str, Any]] | None = None,
    baseline: str = BASELINE,
) -> tuple[list[str], list[AccuracyDecision]]:
    """The rows a speed-up may be claimed against: the accuracy reference and every other float row whose
    paired Δ vs it is non-inferior at the accuracy margin (the same test as the candidates', Holm over the
    float rows). A bf16 float that loses accuracy beyond the margin is no honest baseline; one within it is,
    because a user would ship it instead of quantizing."""
    ref = accuracy_reference(variants, baseline)
    if ref is None:
        return [], []
    others = [v for v in float_rows(variants, baseline) if v.name in correct]
    if not others or ref.name not in correct:
        return [ref.name], []
    decisions = accuracy_decisions(others, correct, ref.name, margin, level, stopped)
    return [ref.name, *(d.name for d in decisions if d.status == "acceptable")], decisions


def speed_baseline(
    variants: Sequence[VariantResult], shape: str | None = None, eligible: Sequence[str] | None = None, baseline: str = BASELINE
) -> VariantResult | None:
    """The row every speed-up claim is measured against: among `eligible` float rows (`float_baselines`;
    default: the accuracy reference alone) the fastest at `shape` (lowest p50). The benchmark's A/A control
    and the Δ accuracy stay on the accuracy reference."""
    ref = variant_named(variants, baseline)
    names = list(eligible) if eligible else [baseline]
    timed = [v for v in variants if v.name in names and shape is not None and any(s.key == shape for s in v.latency)]
    if not timed:
        return ref
    return min(timed, key=lambda v: (_at(v, shape).p50_ms, v.name != baseline, v.name))  # type: ignore[arg-type]


def candidates(variants: Sequence[VariantResult], baseline: str = BASELINE) -> list[VariantResult]:
    """The rows the rule may select: quantized, ok (every gate passed), scored, not a standard tool's row."""
    return [
        v for v in variants
        if v.name != baseline and v.precision not in FLOAT_PRECISIONS and v.status == "ok" and not v.reference and "accuracy" in v.metrics
    ]


def emulated(v: VariantResult) -> bool:
    """A quantized variant the engine runs without low-precision kernels (FP8 on ONNX Runtime CPU)."""
    graph = v.fidelity.get("engine_graph") if isinstance(v.fidelity, dict) else None
    if isinstance(graph, dict) and "emulated" in str(graph.get("why", "")):
        return True
    return v.engine.get("backend", "onnxruntime") == "onnxruntime" and v.engine.get("integer_matmuls") == 0 and v.precision == "int8"


# ---------------------------------------------------------------------------------------------
# accuracy: non-inferiority at the margin, Holm over the candidates


@dataclass
class AccuracyDecision:
    name: str
    n: int  # examples both it and the reference were scored on
    delta: float
    low: float
    high: float
    discordant: int
    p_noninferiority: float  # one-sided, Tango's score test of Δ <= -margin
    p_holm: float
    status: str  # acceptable | undetermined | inferior
    stopped: dict[str, Any] | None = None  # the evaluation's early stop, when it had one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_on_common(correct: Mapping[str, np.ndarray], a: str, b: str, level: float) -> Any:
    """paired_comparison of a vs b on the examples both were scored on (a prefix: evaluation order is fixed)."""
    ca, cb = np.asarray(correct[a], dtype=bool), np.asarray(correct[b], dtype=bool)
    n = min(ca.size, cb.size)
    return paired_comparison(ca[:n], cb[:n], level)


def accuracy_decisions(
    cands: Sequence[VariantResult],
    correct: Mapping[str, np.ndarray],
    reference: str,
    margin: float,
    level: float = DEFAULT_LEVEL,
    stopped: Mapping[str, dict[str, Any]] | None = None,
) -> list[AccuracyDecision]:
    """Each candidate's non-inferiority decision vs `reference` at `margin`, Holm-adjusted over all of them.

    acceptable: Holm-adjusted p <= level / 2, or the evaluation stopped a row that is never a candidate (a
    float row on another engine or precision) once shown non-inferior at a sequential boundary; inferior: the
    interval lies below -margin, or the evaluation stopped it early for that (measure/accuracy.py); undetermined: neither.
    """
    stopped = stopped or {}
    rows = []
    for v in cands:
        cmp = paired_on_common(correct, v.name, reference, level)
        rows.append((v.name, cmp, cmp.noninferiority_p(margin)))
    adjusted = holm([p for _, _, p in rows])
    out = []
    for (name, cmp, p), p_adj in zip(rows, adjusted, strict=True):
        resolved = stopped[name].get("resolved", "inferior") if name in stopped else None
        if p_adj <= level / 2.0 or resolved == "non-inferior":
            status = "acceptable"
        elif cmp.delta_high < -margin or resolved == "inferior":
            status = "inferior"
        else:
            status = "undetermined"
        out.append(AccuracyDecision(
            name=name, n=cmp.n, delta=cmp.delta, low=cmp.delta_low, high=cmp.delta_high, discordant=cmp.discordant,
            p_noninferiority=p, p_holm=p_adj, status=status, stopped=dict(stopped[name]) if name in stopped else None,
        ))
    return out


# ---------------------------------------------------------------------------------------------
# speed: latency ratios against the speed margin


@dataclass
class SpeedComparison:
    name: str
    versus: str
    ratio: float  # latency of `name` / latency of `versus` (median per-round ratio; > 1: slower)
    low: float | None
    high: float | None
    status: str  # equivalent | slower | faster | undetermined (against the band [1/(1+s), 1+s])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BAND_STATUS = {"equivalent": "equivalent", "above": "slower", "below": "faster", "undetermined": "undetermined"}


def compare_speed(name: str, a: Sequence[float], versus: str, b: Sequence[float], margin: float, level: float = DEFAULT_LEVEL) -> SpeedComparison:
    """Latency of `a` relative to `b`, both timed in the same rounds, against the speed margin."""
    r = ratio_interval(a, b, level)
    return SpeedComparison(name, versus, r.ratio, r.low, r.high, _BAND_STATUS[r.versus_margin(margin)])


def _compare_stats(a: VariantResult, b: VariantResult, shape: str, margin: float, level: float) -> SpeedComparison:
    sa, sb = _at(a, shape), _at(b, shape)
    if sa.samples_ms and len(sa.samples_ms) == len(sb.samples_ms):
        return compare_speed(a.name, sa.samples_ms, b.name, sb.samples_ms, margin, level)
    # no paired samples (a report from before v2): only the medians, no interval
    ratio = sa.p50_ms / sb.p50_ms if sb.p50_ms > 0 else math.inf
    status = "equivalent" if 1 / (1 + margin) <= ratio <= 1 + margin else "slower" if ratio > 1 else "faster"
    return SpeedComparison(a.name, b.name, ratio, None, None, status)


def _selection_shape(group: Sequence[VariantResult]) -> str | None:
    """The largest (batch, seq) every member was timed at: the throughput a deployment cares about."""
    common: set[tuple[int, int]] | None = None
    for v in group:
        shapes = {(s.batch_size, s.seq_length) for s in v.latency}
        common = shapes if common is None else common & shapes
    if not common:
        return None
    b, s = max(common)
    return f"b{b}xs{s}"


def _at(v: VariantResult, key: str) -> LatencyStats:
    return next(s for s in v.latency if s.key == key)


def speed_resolution(
    contenders: Sequence[str], baseline: str, samples: Mapping[str, Sequence[float]], margin: float, level: float = DEFAULT_LEVEL
) -> Resolution:
    """Whether more rounds at the selection shape could still change the selection among `contenders`
    (the acceptable candidates): every comparison that decides it, each contender vs the baseline
    (eligibility) and the fastest eligible vs every other, lies inside the band [1/(1+s), 1+s] or outside it."""
    from quant_workbench.measure.latency import Resolution

    names = [c for c in contenders if c in samples and len(samples[c]) == len(samples.get(baseline, []))]
    if not names:
        return Resolution(True, [], "no decision depends on speed: no candidate is acceptable on accuracy")
    pending: list[str] = []
    versus_base = {c: compare_speed(c, samples[c], baseline, samples[baseline], margin, level) for c in names}
    pending += [f"{c} vs {baseline}" for c, cmp in versus_base.items() if cmp.status == "undetermined"]
    eligible = [c for c in names if versus_base[c].status != "slower"]
    if eligible:
        fastest = min(eligible, key=lambda c: (versus_base[c].ratio, c))
        for c in eligible:
            if c != fastest and compare_speed(c, samples[c], fastest, samples[fastest], margin, level).status == "undetermined":
                pending.append(f"{c} vs {fastest}")
    if pending:
        return Resolution(False, pending, f"unresolved against the ±{100 * margin:g} % speed margin: {', '.join(pending)}")
    return Resolution(True, [], f"every speed comparison that decides the selection is resolved against the ±{100 * margin:g} % margin")


# ---------------------------------------------------------------------------------------------
# the rule


@dataclass
class Selection:
    winner: str | None
    outcome: str = "decided"  # decided | undetermined | none within the margin | no speed-up | no candidates
    accuracy_margin: float = DEFAULT_ACCURACY_MARGIN
    speed_margin: float = DEFAULT_SPEED_MARGIN
    margin_source: str = "selection.accuracy_margin (default)"
    baseline: str = BASELINE
    level: float = DEFAULT_LEVEL
    acceptable: list[str] = field(default_factory=list)
    undetermined: list[str] = field(default_factory=list)
    inferior: list[str] = field(default_factory=list)
    speed_group: list[str] = field(default_factory=list)  # acceptable, eligible and as fast as the fastest
    most_accurate: str | None = None
    fastest: str | None = None
    shape: str | None = None  # latency key the speed was compared at
    accuracy: list[AccuracyDecision] = field(default_factory=list)
    speed: list[SpeedComparison] = field(default_factory=list)
    needed_evaluation_size: int | None = None
    warning: str | None = None
    reason: str = ""
    split: str = "evaluation"
    criterion: str | None = None  # the search criterion the margin came from, e.g. "accuracy drop <= 1 % of float (relative)"
    threshold: float | None = None  # float accuracy - margin
    # the float rows a speed-up may be claimed against (the accuracy reference and the other float rows
    # non-inferior to it at the margin, e.g. bf16 or another engine's float), their tests, and the fastest
    float_baselines: list[str] = field(default_factory=list)
    float_accuracy: list[AccuracyDecision] = field(default_factory=list)
    speed_baseline: str | None = None

    @property
    def rule(self) -> str:
        return RULE.format(
            baseline=self.baseline, margin_pts=pct(self.accuracy_margin, " pt", "?"), margin_source=self.margin_source, half=self.level / 2,
            k=len(self.accuracy), conf=100 * (1 - self.level), speed=100 * self.speed_margin, top=1 + self.speed_margin,
        )

    def to_dict(self) -> dict[str, Any]:
        extra = {"criterion": self.criterion, "threshold": self.threshold, "meeting": list(self.acceptable)} if self.criterion is not None else {}
        return {
            **extra,
            "rule": self.rule, "outcome": self.outcome, "level": self.level, "winner": self.winner,
            "accuracy_margin": self.accuracy_margin, "speed_margin": self.speed_margin, "margin_source": self.margin_source,
            "baseline": self.baseline, "split": self.split,
            "speed_baseline": self.speed_baseline, "float_baselines": self.float_baselines,
            "float_accuracy": [d.to_dict() for d in self.float_accuracy],
            "acceptable": self.acceptable, "undetermined": self.undetermined, "inferior": self.inferior, "speed_group": self.speed_group,
            "most_accurate": self.most_accurate, "fastest": self.fastest, "shape": self.shape,
            "comparisons": {
                "accuracy": [d.to_dict() for d in self.accuracy],
                "speed": [s.to_dict() for s in self.speed],
                "accuracy_family": len(self.accuracy),
                "adjustment": "Holm over the candidates' non-inferiority tests",
                "interval": INTERVAL_METHOD,
            },
            "needed_evaluation_size": self.needed_evaluation_size,
            "warning": self.warning,
            # v2/v3 readers: the acceptable set and the speed group in the old places
            "tie_groups": {"accuracy": self.acceptable, "speed": self.speed_group},
            "reason": self.reason,
        }


def _neg_name(name: str) -> tuple[int, ...]:
    # max() with this key prefers the alphabetically first name among exact ties
    return tuple(-ord(c) for c in name)


def _accuracy_key(prefer: str | None) -> Any:
    return lambda v: (v.metrics["accuracy"], v.metrics.get("agreement", 0.0), v.name == prefer, _neg_name(v.name))


def select_variant(
    variants: Sequence[VariantResult],
    correct: Mapping[str, np.ndarray],
    level: float = DEFAULT_LEVEL,
    *,
    accuracy_margin: float = DEFAULT_ACCURACY_MARGIN,
    speed_margin: float = DEFAULT_SPEED_MARGIN,
    margin_source: str = "selection.accuracy_margin (default)",
    baseline: str = BASELINE,
    prefer: str | None = None,
    stopped: Mapping[str, dict[str, Any]] | None = None,
    criterion: str | None = None,
) -> Selection:
    """Apply the rule (module docstring). `correct` maps a variant name to its per-example correctness on
    the evaluation split (a variant whose evaluation stopped early has a shorter prefix); `stopped` the
    evaluation's early stops; `prefer` the search's own choice (a late tie-break)."""
    sel = Selection(
        None, accuracy_margin=accuracy_margin, speed_margin=speed_margin, margin_source=margin_source, baseline=baseline, level=level,
        criterion=criterion,
    )
    eligible_floats, sel.float_accuracy = float_baselines(variants, correct, accuracy_margin, level, stopped, baseline)
    sel.float_baselines = eligible_floats
    cands = candidates(variants, baseline)
    ref = accuracy_reference(variants, baseline)
    if ref is not None and "accuracy" in ref.metrics:
        sel.threshold = ref.metrics["accuracy"] - accuracy_margin
    if not cands:
        sel.outcome, sel.reason = "no candidates", "no quantized variant was scored"
        return sel
    by_name = {v.name: v for v in cands}
    key = _accuracy_key(prefer)
    sel.most_accurate = max(cands, key=key).name
    if ref is None or ref.name not in correct or any(v.name not in correct for v in cands):
        sel.outcome, sel.undetermined, sel.winner = "undetermined", [v.name for v in cands], sel.most_accurate
        sel.reason = f"no paired correctness against {baseline}: accuracy cannot be compared at the margin; the most accurate is recommended"
        sel.warning = f"undetermined: {sel.reason}"
        return sel
    sel.accuracy = accuracy_decisions(cands, correct, ref.name, accuracy_margin, level, stopped)
    status = {d.name: d.status for d in sel.accuracy}
    sel.acceptable = [n for n, s in status.items() if s == "acceptable"]
    sel.undetermined = [n for n, s in status.items() if s == "undetermined"]
    sel.inferior = [n for n, s in status.items() if s == "inferior"]
    k = len(cands)
    acc_text = (
        f"non-inferior at {pct(accuracy_margin, ' pt', '?')} vs {baseline} (Holm over {k} candidate(s)): {', '.join(sel.acceptable) or 'none'}"
        + (f"; undetermined: {', '.join(sel.undetermined)}" if sel.undetermined else "")
        + (f"; inferior: {', '.join(sel.inferior)}" if sel.inferior else "")
    )
    if not sel.acceptable:
        return _nothing_acceptable(sel, by_name, key, acc_text, level)
    acceptable = [by_name[n] for n in sel.acceptable]
    ref_row = accuracy_reference(variants, baseline)
    shape = _selection_shape([*acceptable, ref_row]) if ref_row is not None else None
    base = speed_baseline(variants, shape, eligible_floats, baseline)
    sel.shape = shape
    sel.speed_baseline = base.name if base is not None and shape is not None else None
    if shape is None or base is None:
        pool = [v for v in acceptable if not emulated(v)]
        emulated_out = [v.name for v in acceptable if emulated(v)]
        if not pool:
            sel.outcome, pool = "no speed-up", acceptable
            sel.warning = f"every acceptable candidate is emulated on this engine ({', '.join(emulated_out)}) and speed was not measured"
        sel.winner = max(pool, key=key).name
        sel.speed_group = [v.name for v in pool]
        sel.reason = (
            f"{acc_text}; speed was not measured (benchmark disabled), so accuracy decides"
            + (f" among those not emulated (left out: {', '.join(emulated_out)})" if emulated_out and sel.outcome == "decided" else "")
            + f" -> {sel.winner}."
        )
        return sel
    versus_base = {v.name: _compare_stats(v, base, shape, speed_margin, level) for v in acceptable}
    sel.speed = list(versus_base.values())
    eligible = [v for v in acceptable if versus_base[v.name].status != "slower"]
    slower = [v.name for v in acceptable if v not in eligible]
    if not eligible:
        sel.outcome = "no speed-up"
        sel.winner = max(acceptable, key=key).name
        sel.speed_group = [v.name for v in acceptable]
        where = "on this engine" if base.name == baseline else f"against {base.name}, the fastest float within the accuracy margin"
        sel.warning = f"every acceptable candidate is slower than {base.name} beyond the {100 * speed_margin:g} % speed margin at {shape}: quantization does not pay {where}"
        sel.reason = f"{acc_text}; {_base_text(base.name, baseline)}; all slower than {base.name} at {shape}: {', '.join(slower)}; the most accurate is recommended -> {sel.winner}."
        return sel
    fastest = min(eligible, key=lambda v: (versus_base[v.name].ratio, v.name))
    sel.fastest = fastest.name
    group = [fastest]
    for v in eligible:
        if v is fastest:
            continue
        cmp = _compare_stats(v, fastest, shape, speed_margin, level)
        sel.speed.append(cmp)
        if cmp.status != "slower":
            group.append(v)
    sel.speed_group = [v.name for v in group]
    sel.winner = max(group, key=key).name
    unresolved = [f"{c.name} vs {c.versus}" for c in sel.speed if c.status == "undetermined"]
    reason = (
        f"{acc_text}; {_base_text(base.name, baseline)}"
        + (f"; slower than {base.name} beyond the speed margin: {', '.join(slower)}" if slower else "")
        + f"; fastest at {shape}: {fastest.name} ({_at(fastest, shape).p50_ms:.2f} ms p50); within ±{100 * speed_margin:g} % of it "
        f"(or unresolved): {', '.join(sel.speed_group)}"
    )
    if len(group) > 1:
        reason += f"; the most accurate of those: {sel.winner} ({pct(by_name[sel.winner].metrics['accuracy'], ' %', '?')})"
    if unresolved:
        reason += f"; speed comparisons left unresolved by the benchmark (counted as equally fast): {', '.join(unresolved)}"
    sel.reason = reason + f" -> {sel.winner}."
    return sel


def _base_text(speed_base: str, baseline: str) -> str:
    if speed_base == baseline:
        return f"speed baseline: {baseline}"
    return f"speed baseline: {speed_base} (the fastest float row within the accuracy margin of {baseline})"


def _nothing_acceptable(sel: Selection, by_name: Mapping[str, VariantResult], key: Any, acc_text: str, level: float) -> Selection:
    decisions = {d.name: d for d in sel.accuracy}
    if sel.undetermined:
        best = max((by_name[n] for n in sel.undetermined), key=key)
        sel.outcome, sel.winner = "undetermined", best.name
        d = decisions[best.name]
        q = d.discordant / d.n if d.n else 0.0
        distance = abs(d.delta + sel.accuracy_margin)
        # Holm's first step is the strictest any candidate may face: one-sided level / (2k)
        if distance > 1e-12:
            sel.needed_evaluation_size = required_size(max(q, 1.0 / max(d.n, 1)), distance, level / max(len(sel.accuracy), 1))
        size = f"about {sel.needed_evaluation_size:,} evaluation examples would decide for {best.name} (if its Δ {100 * d.delta:+.2f} pt and discordance {100 * q:.1f} % hold)" if sel.needed_evaluation_size else "its Δ sits on the margin"
        sel.warning = (
            f"undetermined: no candidate is shown non-inferior at the {pct(sel.accuracy_margin, ' pt', '?')} margin with {d.n:,} evaluation examples; "
            f"{size}; recommended: {best.name}, the most accurate that could still be within the margin"
        )
        sel.reason = f"{acc_text}; nothing is acceptable yet -> {best.name} ({sel.warning})."
        return sel
    best = max(by_name.values(), key=key)
    sel.outcome, sel.winner = "none within the margin", best.name
    sel.warning = f"every candidate is less accurate than {sel.baseline} by more than the {pct(sel.accuracy_margin, ' pt', '?')} margin; the most accurate, {best.name}, is recommended"
    sel.reason = f"{acc_text} -> {best.name} ({sel.warning})."
    return sel


# ---------------------------------------------------------------------------------------------
# the selected variant against the standard tools' reference rows (report/sections/engine.py renders the verdicts)


def compare_references(
    variants: Sequence[VariantResult], correct: Mapping[str, np.ndarray], winner: str | None, level: float = DEFAULT_LEVEL
) -> None:
    """Store in each scored reference row `intervals["vs_selected"]`: the paired Δ of the selected variant
    minus the row, on the examples both were scored on (Tango interval, exact McNemar)."""
    if winner is None or winner not in correct:
        return
    for v in variants:
        if v.reference and v.status == "ok" and v.name in correct:
            cmp = paired_on_common(correct, winner, v.name, level)
            v.intervals["vs_selected"] = {**cmp.to_dict(), "selected": winner}
