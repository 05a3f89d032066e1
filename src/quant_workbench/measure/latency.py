"""Interleaved latency benchmark: every variant is timed in the same process, turn by turn.

Timing float and INT8 one after the other (all float calls, then all INT8 calls) lets thermal
throttling, turbo states, other tenants and page-cache effects drift between the two blocks and
land in the speed-up. Running every variant once per round gives them the same machine state; a
fresh random order per round keeps position effects (the runner after a heavy one, the first of a
round) out of any one variant; ONNX Runtime sessions do not spin idle threads into each other
(runtime/onnxruntime.py); a second session of the baseline (the A/A control) shows what is left of
such biases; and speed-ups are medians of per-round ratios with intervals that resample blocks of
neighbouring rounds, so drift over the run cancels instead of widening or biasing them.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from quant_workbench.config.recipe import BenchmarkSpec, Recipe
from quant_workbench.core.results import LatencyStats, VariantResult
from quant_workbench.measure.stats import DEFAULT_LEVEL, median_interval, median_ratio, ratio_interval
from quant_workbench.models.loading import LoadedModel
from quant_workbench.runtime import Engine, EngineFromOnnx

Runner = Callable[[dict[str, np.ndarray]], object]  # runs one inference on a feed dict

# Low ids of BERT-family vocabularies are special tokens ([PAD], [CLS], [unused*]); sampling from a
# range of ordinary word pieces keeps the benchmark input representative of real text.
_TOKEN_LOW = 1000
_TOKEN_HIGH_CAP = 20000


def make_feed(
    batch_size: int,
    seq_length: int,
    input_names: Sequence[str],
    vocab_size: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A synthetic int64 feed for the encoder inputs named in `input_names`.

    Only input_ids, attention_mask and token_type_ids are produced; other names are left out so
    the caller decides how to fill inputs this module does not know about.
    """
    if batch_size < 1 or seq_length < 1:
        raise ValueError(f"batch_size and seq_length must be positive, got {batch_size} and {seq_length}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    high = min(vocab_size, _TOKEN_HIGH_CAP)
    # Tiny test vocabularies have no "ordinary" range above 1000; fall back to everything but id 0.
    low = _TOKEN_LOW if high > _TOKEN_LOW else 1
    rng = np.random.default_rng(seed)
    shape = (batch_size, seq_length)
    feed: dict[str, np.ndarray] = {}
    names = set(input_names)
    if "input_ids" in names:
        feed["input_ids"] = rng.integers(low, high, size=shape, dtype=np.int64)
    if "attention_mask" in names:
        feed["attention_mask"] = np.ones(shape, dtype=np.int64)
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros(shape, dtype=np.int64)
    return feed


def _stats(
    batch_size: int, seq_length: int, seconds: list[float], stop: str | None = None, level: float = DEFAULT_LEVEL, end_to_end: list[float] | None = None
) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = (float(x) for x in np.percentile(ms, [50, 95, 99]))
    low, high = median_interval(ms, level)
    e2e = [float(x) * 1000.0 for x in end_to_end] if end_to_end else []
    return LatencyStats(
        batch_size=batch_size,
        seq_length=seq_length,
        iterations=len(seconds),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        # The median, not the mean, so that one preempted call does not understate throughput.
        throughput_seq_per_s=batch_size / (p50 / 1000.0) if p50 > 0 else float("inf"),
        p50_low_ms=low,
        p50_high_ms=high,
        samples_ms=[float(x) for x in ms],
        stop=stop,
        end_to_end_samples_ms=e2e,
        end_to_end_p50_ms=float(np.median(e2e)) if e2e else None,
    )


def aa_name(baseline: str) -> str:
    """The A/A control: the baseline's graph in a second session, timed as if it were another variant."""
    return f"{baseline} (A/A)"


@dataclass
class Resolution:
    """Whether every speed comparison that could change the selection is resolved against the speed margin."""

    resolved: bool
    pending: list[str] = field(default_factory=list)  # comparisons whose interval still crosses a margin edge
    detail: str = ""


# Given the per-round samples (seconds) of every runner at the selection shape so far, say whether more
# rounds could still change the selection (selection.speed_resolution builds one from the run's accuracy decisions).
SpeedDecision = Callable[[Mapping[str, Sequence[float]]], Resolution]


def selection_shape(spec: BenchmarkSpec) -> tuple[int, int]:
    """The largest (batch, seq) of the benchmark: the shape the selection compares speed at."""
    return max((b, s) for b in spec.batch_sizes for s in spec.seq_lengths)


def shape_order(spec: BenchmarkSpec) -> list[tuple[int, int]]:
    """The selection shape first (the budget goes where the decision is), then the others in spec order."""
    first = selection_shape(spec)
    return [first] + [(b, s) for b in spec.batch_sizes for s in spec.seq_lengths if (b, s) != first]


def _widest_speedup_interval(times: Mapping[str, Sequence[float]], baseline: str, level: float) -> float:
    """The largest relative half-width among the speed-up intervals vs the baseline."""
    base = times[baseline]
    return max(
        (ratio_interval(base, t, level).relative_half_width for name, t in times.items() if name != baseline),
        default=0.0,
    )


def benchmark_interleaved(
    runners: dict[str, Runner],
    spec: BenchmarkSpec,
    input_names: Sequence[str],
    vocab_size: int,
    progress: bool = True,
    *,
    baseline: str = "float",
    level: float = DEFAULT_LEVEL,
    clock: Callable[[], float] = time.perf_counter,
    seed: int = 0,
    decide: SpeedDecision | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, list[LatencyStats]]:
    """Time every runner at every (batch, seq) of `spec`, all of them in each round, in a fresh random
    order per round (seeded by `seed` and the shape; the orders are written to `record`).

    Returns, per runner name, one LatencyStats per shape in spec order (batch-major). A runner must
    block until its result is ready (e.g. synchronize a GPU stream), otherwise only the launch is
    timed; a runner that sets `last_compute_s` after each call (the TensorRT engine: CUDA-event time of
    the execution alone) is timed by it, and the wall time of the call, copies included, is kept as the
    end-to-end samples. Exceptions from a runner propagate: a variant that cannot run has no latency.

    Shapes run selection shape first (`selection_shape`). With `spec.speedup_tolerance` set and the
    baseline among the runners, each shape runs at least `spec.iterations` rounds; then the selection
    shape keeps going until `decide` says every comparison that could change the selection is resolved
    (without `decide`: until every speed-up interval vs the baseline is within ± the tolerance), and every
    other shape until its speed-up intervals are within the tolerance, or until the time budget
    (`spec.max_seconds`, all shapes together: what is left is split over the shapes not yet timed) or
    `spec.max_iterations` is used up; `LatencyStats.stop` says which. `clock` is only replaced by tests.
    """
    order = shape_order(spec)
    results: dict[str, list[LatencyStats]] = {name: [] for name in runners}
    if not runners:
        return results
    names = list(runners)
    adaptive = spec.speedup_tolerance is not None and baseline in runners and len(runners) > 1
    total = len(order) * (spec.iterations + spec.warmup) * len(runners)
    by_shape: dict[tuple[int, int], dict[str, LatencyStats]] = {}
    design: dict[str, Any] = {"seed": seed, "runners": names, "baseline": baseline, "shapes": {}, "order": "fresh random permutation of the runners per round"}
    t_begin = clock()
    with tqdm(total=total, desc="benchmark", unit="call", disable=not progress, leave=False) as bar:
        for shape_index, (batch_size, seq_length) in enumerate(order):
            key = f"b{batch_size}xs{seq_length}"
            t_shape = clock()
            left = max(0.0, spec.max_seconds - (t_shape - t_begin))
            # the selection shape may use the whole budget (the decision is there); the others share what it left
            deadline = t_shape + (left if shape_index == 0 and decide is not None else left / (len(order) - shape_index))
            # One feed shared by all runners: differences must come from the variant, not the input.
            feed = make_feed(batch_size, seq_length, input_names, vocab_size)
            rng = np.random.default_rng([seed, batch_size, seq_length])
            bar.set_postfix_str(key)
            for _ in range(spec.warmup):
                for i in rng.permutation(len(names)):
                    runners[names[int(i)]](feed)
                bar.update(len(names))
            times: dict[str, list[float]] = {name: [] for name in names}
            end_to_end: dict[str, list[float]] = {name: [] for name in names}
            orders: list[list[int]] = []

            def one_round(
                feed: dict[str, np.ndarray] = feed, times: dict[str, list[float]] = times, end_to_end: dict[str, list[float]] = end_to_end,
                orders: list[list[int]] = orders, rng: np.random.Generator = rng,
            ) -> None:
                perm = [int(i) for i in rng.permutation(len(names))]
                orders.append(perm)
                for i in perm:
                    name = names[i]
                    run = runners[name]
                    start = time.perf_counter()
                    run(feed)
                    wall = time.perf_counter() - start
                    compute = getattr(run, "last_compute_s", None)
                    if compute is not None:
                        times[name].append(float(compute))
                        end_to_end[name].append(wall)
                    else:
                        times[name].append(wall)
                bar.update(len(names))

            # A collector pause inside one timed call would be charged to whichever variant was
            # running at that moment; collect now and keep it off while timing (as timeit does).
            gc.collect()
            gc_was_enabled = gc.isenabled()
            gc.disable()
            stop = "fixed"
            resolution: Resolution | None = None
            try:
                for _ in range(spec.iterations):
                    one_round()
                if adaptive:
                    assert spec.speedup_tolerance is not None
                    tolerance = spec.speedup_tolerance
                    deciding = decide is not None and shape_index == 0
                    rounds_per_check = 1
                    while True:
                        done = len(times[baseline])
                        t_check = time.perf_counter()
                        if deciding:
                            assert decide is not None
                            resolution = decide(times)
                            finished = resolution.resolved
                        else:
                            finished = _widest_speedup_interval(times, baseline, level) <= tolerance
                        check_s = time.perf_counter() - t_check
                        if finished:
                            stop = "resolved" if deciding else "tolerance"
                            break
                        if done >= spec.max_iterations:
                            stop = "iteration cap"
                            break
                        if clock() >= deadline:
                            stop = "time cap"
                            break
                        # Rounds between checks: enough that checking costs < 5 % of the timing.
                        round_s = max(sum(t[-1] for t in times.values()), 1e-6)
                        rounds_per_check = max(1, math.ceil(20.0 * check_s / round_s))
                        chunk = min(rounds_per_check, spec.max_iterations - done)
                        bar.total += chunk * len(names)
                        for _ in range(chunk):
                            one_round()
                            if clock() >= deadline:
                                break
            finally:
                if gc_was_enabled:
                    gc.enable()
            by_shape[(batch_size, seq_length)] = {
                name: _stats(batch_size, seq_length, seconds, stop, level, end_to_end[name]) for name, seconds in times.items()
            }
            design["shapes"][key] = {
                "rounds": len(orders), "warmup": spec.warmup, "stop": stop, "seconds": round(clock() - t_shape, 3),
                "selection_shape": shape_index == 0, "orders": orders,
                **({"pending": resolution.pending, "detail": resolution.detail} if resolution is not None else {}),
            }
    for shape in [(b, s) for b in spec.batch_sizes for s in spec.seq_lengths]:
        for name in names:
            results[name].append(by_shape[shape][name])
    if record is not None:
        record.update(design)
    return results


def speedup_intervals(
    latency: dict[str, list[LatencyStats]], baseline: str, level: float = DEFAULT_LEVEL
) -> dict[str, dict[str, list[float]]]:
    """Per non-baseline runner: {shape key: [low, high]} of its speed-up vs the baseline (stats.ratio_interval:
    the median per-round ratio baseline / runner, block bootstrap over rounds).

    Needs the per-iteration samples of both, timed in the same rounds; shapes without them are skipped.
    """
    base = {s.key: s.samples_ms for s in latency.get(baseline, [])}
    out: dict[str, dict[str, list[float]]] = {}
    for name, stats in latency.items():
        if name == baseline:
            continue
        out[name] = {}
        for s in stats:
            b = base.get(s.key)
            if b and s.samples_ms and len(b) == len(s.samples_ms):
                r = ratio_interval(b, s.samples_ms, level)
                out[name][s.key] = [r.low, r.high]
    return out


def speedup(base: LatencyStats, other: LatencyStats) -> float | None:
    """Speed-up of `other` over `base`: the median per-round ratio when both were timed in the same rounds
    (the estimate whose interval ratio_interval gives), else the ratio of their medians."""
    if base.samples_ms and len(base.samples_ms) == len(other.samples_ms):
        return median_ratio(base.samples_ms, other.samples_ms)
    return base.p50_ms / other.p50_ms if other.p50_ms > 0 else None


def speedups(latency: dict[str, list[LatencyStats]], baseline: str) -> dict[str, dict[str, float]]:
    """Per non-baseline runner: {shape key: its speed-up over the baseline} (> 1 means faster than baseline).

    Shapes measured for only one of the two are skipped rather than guessed.
    """
    if baseline not in latency:
        raise ValueError(
            f"baseline '{baseline}' was not benchmarked; measured: {', '.join(latency) or 'none'}"
        )
    base = {s.key: s for s in latency[baseline]}
    out: dict[str, dict[str, float]] = {}
    for name, stats in latency.items():
        if name == baseline:
            continue
        out[name] = {}
        for s in stats:
            if s.key in base:
                r = speedup(base[s.key], s)
                if r is not None:
                    out[name][s.key] = r
    return out


def aa_summary(latency: dict[str, list[LatencyStats]], baseline: str, level: float = DEFAULT_LEVEL) -> dict[str, dict[str, float]]:
    """The A/A control per shape: the baseline's second session vs the first, {key: {ratio, low, high}}.

    Both run the same graph, so anything but 1.00x within the interval is position, spill-over or drift
    bias of the benchmark, not a property of a model.
    """
    aa = aa_name(baseline)
    if aa not in latency or baseline not in latency:
        return {}
    base = {s.key: s for s in latency[baseline]}
    out: dict[str, dict[str, float]] = {}
    for s in latency[aa]:
        b = base.get(s.key)
        if b is not None and b.samples_ms and len(b.samples_ms) == len(s.samples_ms):
            r = ratio_interval(b.samples_ms, s.samples_ms, level)
            out[s.key] = {"ratio": r.ratio, "low": r.low, "high": r.high}
    return out


def benchmark_variants(
    recipe: Recipe,
    loaded: LoadedModel,
    variants: Sequence[VariantResult],
    paths: Mapping[str, Path],
    *,
    baseline: str = "float",
    decide: SpeedDecision | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The run's benchmark stage: every ok variant's engine, plus a second session of the baseline (the
    A/A control), timed in one interleaved loop. Returns the benchmark's design record for report.json
    (seed, per-round orders, stops, the A/A control, the sessions' settings).

    Fills each variant's latency, speed-up and speed-up interval. A variant whose engine cannot be
    built at the benchmark's shapes (a TensorRT build, say) fails alone; the rest are timed.
    """
    spec = recipe.benchmark
    level = recipe.selection.level
    engines: dict[str, Engine] = {}
    for v in [v for v in variants if v.status == "ok"]:
        try:
            engines[v.name] = EngineFromOnnx(paths[v.name], recipe, v.name, v.precision, threads=spec.threads, runtime=v.runtime, inference_precision=v.inference_precision)
        except Exception as exc:
            v.status, v.error = "failed", f"benchmark engine failed: {exc}"
            say(f"  {v.name} failed: {v.error}")
    ok = [v for v in variants if v.status == "ok"]
    if baseline not in engines:
        say(f"  benchmark skipped: the {baseline} baseline has no engine")
        return {}
    base_variant = next(v for v in ok if v.name == baseline)
    # opened under the baseline's own name: an engine that builds from the file (TensorRT) reuses the baseline's plan
    engines[aa_name(baseline)] = EngineFromOnnx(paths[baseline], recipe, baseline, base_variant.precision, threads=spec.threads)
    design: dict[str, Any] = {}
    try:
        latency = benchmark_interleaved(
            dict(engines.items()), spec, loaded.input_names, loaded.vocab_size, progress=progress, level=level,
            baseline=baseline, seed=recipe.seed, decide=decide, record=design,
        )
        design["sessions"] = engines[baseline].describe()
    finally:
        engines.clear()
    ratios = speedups(latency, baseline)
    intervals = speedup_intervals(latency, baseline, level)
    for v in ok:
        v.latency = latency.get(v.name, [])
        v.speedup_vs_float = ratios.get(v.name, {})
        v.speedup_interval_vs_float = intervals.get(v.name, {})
    design["aa"] = aa_summary(latency, baseline, level)
    design["aa_runner"] = aa_name(baseline)
    design["aa_samples_ms"] = {s.key: s.samples_ms for s in latency[aa_name(baseline)]}
    design["speed_margin"] = recipe.selection.speed_margin
    design["max_seconds"] = spec.max_seconds
    for key, aa in design["aa"].items():
        say(f"  A/A control at {key}: {aa['ratio']:.3f}x ({aa['low']:.3f}-{aa['high']:.3f})")
    capped = sorted(f"{key} ({d['stop']}, {d['rounds']} rounds)" for key, d in design["shapes"].items() if d["stop"] in ("time cap", "iteration cap"))
    if capped:
        say(f"  benchmark stopped at its cap: {', '.join(capped)}")
    return design
