"""Interleaved latency benchmark: every variant is timed in the same process, turn by turn.

Timing float and INT8 one after the other (all float calls, then all INT8 calls) lets thermal
throttling, turbo states, other tenants and page-cache effects drift between the two blocks and
land in the speed-up. Running the variants round-robin inside one loop gives both the same
machine state, so the ratio of their medians is a fair comparison even on a noisy host.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .engines import Engine, EngineFromOnnx
from .models import LoadedModel
from .recipe import BenchmarkSpec, Recipe
from .results import LatencyStats, VariantResult
from .stats import DEFAULT_LEVEL, median_interval, ratio_interval

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


def _stats(batch_size: int, seq_length: int, seconds: list[float], stop: str | None = None, level: float = DEFAULT_LEVEL) -> LatencyStats:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = (float(x) for x in np.percentile(ms, [50, 95, 99]))
    low, high = median_interval(ms, level)
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
    )


def _widest_speedup_interval(times: dict[str, list[float]], baseline: str, level: float) -> float:
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
) -> dict[str, list[LatencyStats]]:
    """Time every runner at every (batch, seq) of `spec`, round-robin within each iteration.

    Returns, per runner name, one LatencyStats per shape in spec order (batch-major). A runner must
    block until its result is ready (e.g. synchronize a GPU stream), otherwise only the launch is
    timed. Exceptions from a runner propagate: a variant that cannot run has no latency to report.

    With `spec.speedup_tolerance` set and `baseline` among the runners, each shape runs at least
    `spec.iterations` rounds and then keeps going until every speed-up vs the baseline has a
    (1 - level) interval within ± the tolerance, or until its share of `spec.max_seconds` (what is
    left, split evenly over the shapes not yet timed) or `spec.max_iterations` is used up;
    `LatencyStats.stop` says which. `clock` is only replaced by tests.
    """
    shapes = [(b, s) for b in spec.batch_sizes for s in spec.seq_lengths]
    results: dict[str, list[LatencyStats]] = {name: [] for name in runners}
    if not runners:
        return results
    adaptive = spec.speedup_tolerance is not None and baseline in runners and len(runners) > 1
    total = len(shapes) * spec.iterations * len(runners)
    t_begin = clock()
    with tqdm(total=total, desc="benchmark", unit="call", disable=not progress, leave=False) as bar:
        for shape_index, (batch_size, seq_length) in enumerate(shapes):
            t_shape = clock()
            deadline = t_shape + max(0.0, spec.max_seconds - (t_shape - t_begin)) / (len(shapes) - shape_index)
            # One feed shared by all runners: differences must come from the variant, not the input.
            feed = make_feed(batch_size, seq_length, input_names, vocab_size)
            bar.set_postfix_str(f"b{batch_size}xs{seq_length}")
            for _ in range(spec.warmup):
                for run in runners.values():
                    run(feed)
            times: dict[str, list[float]] = {name: [] for name in runners}

            def one_round(feed: dict[str, np.ndarray] = feed, times: dict[str, list[float]] = times) -> None:
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(feed)
                    times[name].append(time.perf_counter() - start)
                bar.update(len(runners))

            # A collector pause inside one timed call would be charged to whichever variant was
            # running at that moment; collect now and keep it off while timing (as timeit does).
            gc.collect()
            gc_was_enabled = gc.isenabled()
            gc.disable()
            stop = "fixed"
            try:
                for _ in range(spec.iterations):
                    one_round()
                if adaptive:
                    assert spec.speedup_tolerance is not None
                    while True:
                        done = len(times[baseline])
                        if _widest_speedup_interval(times, baseline, level) <= spec.speedup_tolerance:
                            stop = "tolerance"
                            break
                        if done >= spec.max_iterations:
                            stop = "iteration cap"
                            break
                        if clock() >= deadline:
                            stop = "time cap"
                            break
                        # Chunks that grow with the sample keep the bootstrap's share of the time small.
                        chunk = min(max(10, done // 4), spec.max_iterations - done)
                        bar.total += chunk * len(runners)
                        for _ in range(chunk):
                            one_round()
                            if clock() >= deadline:
                                break
            finally:
                if gc_was_enabled:
                    gc.enable()
            for name, seconds in times.items():
                results[name].append(_stats(batch_size, seq_length, seconds, stop, level))
    return results


def speedup_intervals(
    latency: dict[str, list[LatencyStats]], baseline: str, level: float = DEFAULT_LEVEL
) -> dict[str, dict[str, list[float]]]:
    """Per non-baseline runner: {shape key: [low, high]} of baseline p50 / runner p50 (stats.ratio_interval).

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


def speedups(latency: dict[str, list[LatencyStats]], baseline: str) -> dict[str, dict[str, float]]:
    """Per non-baseline runner: {shape key: baseline p50 / runner p50} (> 1 means faster than baseline).

    Shapes measured for only one of the two are skipped rather than guessed.
    """
    if baseline not in latency:
        raise ValueError(
            f"baseline '{baseline}' was not benchmarked; measured: {', '.join(latency) or 'none'}"
        )
    base = {s.key: s.p50_ms for s in latency[baseline]}
    out: dict[str, dict[str, float]] = {}
    for name, stats in latency.items():
        if name == baseline:
            continue
        out[name] = {s.key: base[s.key] / s.p50_ms for s in stats if s.key in base and s.p50_ms > 0}
    return out


def benchmark_variants(
    recipe: Recipe,
    loaded: LoadedModel,
    variants: Sequence[VariantResult],
    paths: Mapping[str, Path],
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> None:
    """The run's benchmark stage: every ok variant's engine timed in one interleaved loop against float.

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
    if "float" not in engines:
        say("  benchmark skipped: the float baseline has no engine")
        return
    try:
        latency = benchmark_interleaved(dict(engines.items()), spec, loaded.input_names, loaded.vocab_size, progress=progress, level=level)
    finally:
        engines.clear()
    ratios = speedups(latency, "float")
    intervals = speedup_intervals(latency, "float", level)
    for v in ok:
        v.latency = latency.get(v.name, [])
        v.speedup_vs_float = ratios.get(v.name, {})
        v.speedup_interval_vs_float = intervals.get(v.name, {})
    capped = sorted({f"{s.key} ({s.stop}, {s.iterations} iterations)" for s in latency["float"] if s.stop in ("time cap", "iteration cap")})
    if capped:
        say(f"  benchmark stopped at its cap before the speed-up intervals reached ±{(spec.speedup_tolerance or 0) * 100:g} %: {', '.join(capped)}")
