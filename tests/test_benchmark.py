"""Unit tests of the interleaved benchmark mechanism (not a performance claim)."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from quant_workbench.benchmark import Runner, benchmark_interleaved, make_feed, speedup_intervals, speedups
from quant_workbench.recipe import BenchmarkSpec

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _spec(**kwargs: object) -> BenchmarkSpec:
    # model_validate, not the constructor: mypy without the pydantic plugin misreads Field defaults.
    return BenchmarkSpec.model_validate(kwargs)


def _sleeper(name: str, seconds: float, calls: list[tuple[str, tuple[int, ...]]]) -> Runner:
    def run(feed: dict[str, np.ndarray]) -> object:
        calls.append((name, feed["input_ids"].shape))
        time.sleep(seconds)
        return None

    return run


def test_make_feed_shapes_dtypes_and_determinism() -> None:
    feed = make_feed(4, 16, NAMES, vocab_size=30522, seed=3)
    assert set(feed) == set(NAMES)
    for arr in feed.values():
        assert arr.shape == (4, 16)
        assert arr.dtype == np.int64
    ids = feed["input_ids"]
    assert ids.min() >= 1000 and ids.max() < 20000
    assert (feed["attention_mask"] == 1).all()
    assert (feed["token_type_ids"] == 0).all()
    again = make_feed(4, 16, NAMES, vocab_size=30522, seed=3)
    np.testing.assert_array_equal(ids, again["input_ids"])
    other = make_feed(4, 16, NAMES, vocab_size=30522, seed=4)
    assert not np.array_equal(ids, other["input_ids"])


def test_make_feed_only_requested_names_and_small_vocab() -> None:
    feed = make_feed(2, 8, ["input_ids", "attention_mask"], vocab_size=5000)
    assert set(feed) == {"input_ids", "attention_mask"}
    assert feed["input_ids"].max() < 5000
    tiny = make_feed(2, 8, ["input_ids"], vocab_size=100)
    assert tiny["input_ids"].min() >= 1 and tiny["input_ids"].max() < 100


def test_interleaved_order_stats_and_speedup() -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    runners = {"slow": _sleeper("slow", 0.004, calls), "fast": _sleeper("fast", 0.002, calls)}
    spec = _spec(batch_sizes=[1, 2], seq_lengths=[8], warmup=2, iterations=15)
    lat = benchmark_interleaved(runners, spec, NAMES, vocab_size=30522, progress=False)

    # Round-robin: every warm-up and timed iteration calls slow then fast, per shape in spec order.
    per_shape = (spec.warmup + spec.iterations) * 2
    assert len(calls) == 2 * per_shape
    assert [n for n, _ in calls] == ["slow", "fast"] * (len(calls) // 2)
    assert all(shape == (1, 8) for _, shape in calls[:per_shape])
    assert all(shape == (2, 8) for _, shape in calls[per_shape:])

    assert set(lat) == {"slow", "fast"}
    for stats in lat.values():
        assert [(s.batch_size, s.seq_length) for s in stats] == [(1, 8), (2, 8)]
        for s in stats:
            assert s.iterations == spec.iterations
            assert 0 < s.p50_ms <= s.p95_ms <= s.p99_ms
            assert s.mean_ms > 0
            assert s.throughput_seq_per_s == pytest.approx(s.batch_size / (s.p50_ms / 1000))
    assert lat["fast"][0].p50_ms >= 2.0 and lat["slow"][0].p50_ms >= 4.0

    sp = speedups(lat, baseline="slow")
    assert set(sp) == {"fast"}
    assert set(sp["fast"]) == {"b1xs8", "b2xs8"}
    for value in sp["fast"].values():
        assert 1.3 < value < 3.0
    assert gc.isenabled()


def test_runner_error_propagates_and_gc_restored() -> None:
    def boom(feed: dict[str, np.ndarray]) -> object:
        raise RuntimeError("engine crashed")

    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=2)
    with pytest.raises(RuntimeError, match="engine crashed"):
        benchmark_interleaved({"x": boom}, spec, NAMES, vocab_size=1000, progress=False)
    assert gc.isenabled()


def test_speedups_unknown_baseline() -> None:
    with pytest.raises(ValueError, match="baseline 'float'"):
        speedups({"int8": []}, baseline="float")


def test_no_runners() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=1)
    assert benchmark_interleaved({}, spec, NAMES, vocab_size=1000, progress=False) == {}


# ---------------------------------------------------------------------------------------------
# samples, intervals and the adaptive length (issue 10)


def _noop(feed: dict[str, np.ndarray]) -> object:
    return None


def test_fixed_length_keeps_samples_and_a_p50_interval() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=12, speedup_tolerance=None)
    lat = benchmark_interleaved({"float": _noop, "int8": _noop}, spec, NAMES, vocab_size=30522, progress=False)
    for stats in lat.values():
        st = stats[0]
        assert st.stop == "fixed" and st.iterations == 12 and len(st.samples_ms) == 12
        assert st.p50_low_ms is not None and st.p50_high_ms is not None
        assert st.p50_low_ms <= st.p50_ms <= st.p50_high_ms
        assert st.p50_ms == pytest.approx(float(np.median(st.samples_ms)))


def test_adaptive_stops_once_the_speedup_is_known_within_the_tolerance() -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    runners = {"float": _sleeper("float", 0.004, calls), "int8": _sleeper("int8", 0.002, calls)}
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=1, iterations=10, speedup_tolerance=0.25, max_seconds=30)
    lat = benchmark_interleaved(runners, spec, NAMES, vocab_size=30522, progress=False)
    assert lat["float"][0].stop == "tolerance"
    assert lat["int8"][0].iterations == lat["float"][0].iterations >= 10
    ((low, high),) = speedup_intervals(lat, "float")["int8"].values()
    point = speedups(lat, "float")["int8"]["b1xs8"]
    assert 1.3 < point < 2.8  # 4 ms vs 2 ms sleeps, plus the scheduler's overhead on each
    assert low <= point <= high
    assert high / point - 1 <= 0.25 and 1 - low / point <= 0.25


def test_adaptive_stops_at_the_time_cap_and_says_so() -> None:
    ticks = iter(range(10_000))
    spec = _spec(batch_sizes=[1, 2], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=1e-6, max_seconds=40)
    # a fake clock: every look at it is one "second", so the cap is reached after a few chunks
    lat = benchmark_interleaved({"float": _noop, "int8": _noop}, spec, NAMES, vocab_size=30522, progress=False, clock=lambda: float(next(ticks)))
    for stats in lat.values():
        assert [st.stop for st in stats] == ["time cap", "time cap"]
        assert all(5 <= st.iterations < 1000 for st in stats)


def test_adaptive_stops_at_the_iteration_cap() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=1e-6, max_seconds=600, max_iterations=37)
    lat = benchmark_interleaved({"float": _noop, "int8": _noop}, spec, NAMES, vocab_size=30522, progress=False, clock=lambda: 0.0)
    assert lat["int8"][0].stop == "iteration cap" and lat["int8"][0].iterations == 37


def test_no_adaptation_without_the_baseline() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=7, speedup_tolerance=1e-6)
    lat = benchmark_interleaved({"a": _noop, "b": _noop}, spec, NAMES, vocab_size=30522, progress=False)
    assert lat["a"][0].iterations == 7 and lat["a"][0].stop == "fixed"


def test_max_iterations_below_iterations_is_a_recipe_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_iterations"):
        _spec(iterations=50, max_iterations=10)
