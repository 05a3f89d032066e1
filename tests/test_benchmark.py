"""Unit tests of the interleaved benchmark mechanism (not a performance claim)."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from quant_workbench.benchmark import Runner, benchmark_interleaved, make_feed, speedups
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
