"""Unit tests of the interleaved benchmark mechanism (not a performance claim)."""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import pytest

from quant_workbench.config.recipe import BenchmarkSpec
from quant_workbench.measure.latency import (
    Resolution,
    Runner,
    aa_name,
    aa_summary,
    benchmark_interleaved,
    make_feed,
    selection_shape,
    speedup_intervals,
    speedups,
)

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

    # Every round (warm-up and timed) calls each runner once; the selection shape (the largest) runs first.
    per_shape = (spec.warmup + spec.iterations) * 2
    assert len(calls) == 2 * per_shape
    assert all(sorted(n for n, _ in calls[i : i + 2]) == ["fast", "slow"] for i in range(0, len(calls), 2))
    assert all(shape == (2, 8) for _, shape in calls[:per_shape])
    assert all(shape == (1, 8) for _, shape in calls[per_shape:])

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


class _Jittery:
    """Reports a random compute time each call: a speed-up interval that never reaches a 1e-6 tolerance."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.last_compute_s: float | None = None

    def __call__(self, feed: dict[str, np.ndarray]) -> object:
        self.last_compute_s = float(self.rng.uniform(0.001, 0.002))
        return None


def _jittery() -> dict[str, Runner]:
    return {"float": _Jittery(1), "int8": _Jittery(2)}


def test_adaptive_stops_at_the_time_cap_and_says_so() -> None:
    ticks = iter(range(10_000))
    spec = _spec(batch_sizes=[1, 2], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=1e-6, max_seconds=40)
    # a fake clock: every look at it is one "second", so the cap is reached after a few chunks
    lat = benchmark_interleaved(_jittery(), spec, NAMES, vocab_size=30522, progress=False, clock=lambda: float(next(ticks)))
    for stats in lat.values():
        assert [st.stop for st in stats] == ["time cap", "time cap"]
        assert all(5 <= st.iterations < 1000 for st in stats)


def test_adaptive_stops_at_the_iteration_cap() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=1e-6, max_seconds=600, max_iterations=37)
    lat = benchmark_interleaved(_jittery(), spec, NAMES, vocab_size=30522, progress=False, clock=lambda: 0.0)
    assert lat["int8"][0].stop == "iteration cap" and lat["int8"][0].iterations == 37


def test_no_adaptation_without_the_baseline() -> None:
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=7, speedup_tolerance=1e-6)
    lat = benchmark_interleaved({"a": _noop, "b": _noop}, spec, NAMES, vocab_size=30522, progress=False)
    assert lat["a"][0].iterations == 7 and lat["a"][0].stop == "fixed"


def test_max_iterations_below_iterations_is_a_recipe_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_iterations"):
        _spec(iterations=50, max_iterations=10)


# ---------------------------------------------------------------------------------------------
# position bias, the A/A control, budget where the decision is (issue 16)


class _Reported:
    """A runner that reports its own compute time (as the TensorRT engine does), so timings are exact here.

    `spill` models spill-over: the runner called right after `heavy` in a round pays `spill` seconds extra
    (the previous session's spinning threads); `log` receives every call's name."""

    def __init__(self, name: str, seconds: float, log: list[str], heavy: str = "heavy", spill: float = 0.0) -> None:
        self.name, self.seconds, self.log, self.heavy, self.spill = name, seconds, log, heavy, spill
        self.last_compute_s: float | None = None

    def __call__(self, feed: dict[str, np.ndarray]) -> object:
        after_heavy = bool(self.log) and self.log[-1] == self.heavy
        self.log.append(self.name)
        self.last_compute_s = self.seconds + (self.spill if after_heavy else 0.0)
        return None


def _runners(log: list[str], spill: float = 0.0) -> dict[str, Runner]:
    # dict order puts float right after heavy: a fixed order would always charge float the spill-over
    return {
        "heavy": _Reported("heavy", 0.050, log),
        "float": _Reported("float", 0.010, log, spill=spill),
        aa_name("float"): _Reported(aa_name("float"), 0.010, log, spill=spill),
        "int8": _Reported("int8", 0.005, log, spill=spill),
    }


def test_each_round_runs_in_a_fresh_seeded_random_order_and_records_it() -> None:
    log: list[str] = []
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=30, speedup_tolerance=None)
    record: dict[str, Any] = {}
    benchmark_interleaved(_runners(log), spec, NAMES, vocab_size=30522, progress=False, seed=3, record=record)
    orders = record["shapes"]["b1xs8"]["orders"]
    assert len(orders) == 30 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len({tuple(o) for o in orders}) > 10  # not one fixed order
    names = record["runners"]
    assert [names[i] for o in orders for i in o] == log  # what was recorded is what ran
    again: dict[str, Any] = {}
    benchmark_interleaved(_runners([]), spec, NAMES, vocab_size=30522, progress=False, seed=3, record=again)
    assert again["shapes"]["b1xs8"]["orders"] == orders
    other: dict[str, Any] = {}
    benchmark_interleaved(_runners([]), spec, NAMES, vocab_size=30522, progress=False, seed=4, record=other)
    assert other["shapes"]["b1xs8"]["orders"] != orders


def test_the_aa_control_reads_one_despite_spill_over_from_the_previous_runner() -> None:
    log: list[str] = []
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=200, speedup_tolerance=None)
    lat = benchmark_interleaved(_runners(log, spill=0.004), spec, NAMES, vocab_size=30522, progress=False)
    aa = aa_summary(lat, "float")["b1xs8"]
    assert aa["low"] <= 1.0 <= aa["high"] and 0.97 <= aa["ratio"] <= 1.03
    # what the runner after `heavy` pays is spread over everyone: no runner's median carries it
    assert lat["float"][0].p50_ms == pytest.approx(10.0) and lat["int8"][0].p50_ms == pytest.approx(5.0)


def test_compute_time_is_the_sample_and_the_wall_time_the_end_to_end_line() -> None:
    log: list[str] = []
    spec = _spec(batch_sizes=[1], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=None)
    lat = benchmark_interleaved(_runners(log), spec, NAMES, vocab_size=30522, progress=False)
    st = lat["int8"][0]
    assert st.samples_ms == pytest.approx([5.0] * 5)
    assert len(st.end_to_end_samples_ms) == 5 and st.end_to_end_p50_ms is not None
    plain = benchmark_interleaved({"float": _noop, "int8": _noop}, spec, NAMES, vocab_size=30522, progress=False)
    assert plain["int8"][0].end_to_end_samples_ms == [] and plain["int8"][0].end_to_end_p50_ms is None


def test_the_selection_shape_runs_first_and_stops_when_the_decision_is_resolved() -> None:
    log: list[str] = []
    spec = _spec(batch_sizes=[1, 32], seq_lengths=[8, 16], warmup=0, iterations=5, speedup_tolerance=0.05, max_seconds=600)
    assert selection_shape(spec) == (32, 16)
    seen: list[int] = []

    def decide(samples: Any) -> Resolution:
        n = len(samples["float"])
        seen.append(n)
        return Resolution(n >= 12, [] if n >= 12 else ["int8 vs float"], "test")

    record: dict[str, Any] = {}
    lat = benchmark_interleaved(_runners(log), spec, NAMES, vocab_size=30522, progress=False, decide=decide, record=record)
    shapes = record["shapes"]
    assert list(shapes) == ["b32xs16", "b1xs8", "b1xs16", "b32xs8"]  # selection shape first, then spec order
    first = shapes["b32xs16"]
    assert first["stop"] == "resolved" and first["rounds"] == 12 and first["selection_shape"]
    assert seen[0] == 5 and seen[-1] == 12  # the decision is asked only at the selection shape
    assert all(shapes[k]["stop"] == "tolerance" for k in ("b1xs8", "b1xs16", "b32xs8"))  # exact timings: tolerance met at once
    assert [(s.batch_size, s.seq_length) for s in lat["float"]] == [(1, 8), (1, 16), (32, 8), (32, 16)]  # results in spec order


def test_an_unresolved_decision_runs_to_the_cap_and_says_which_comparisons_were_pending() -> None:
    ticks = iter(range(10_000))
    spec = _spec(batch_sizes=[1, 2], seq_lengths=[8], warmup=0, iterations=5, speedup_tolerance=1e-6, max_seconds=40)
    record: dict[str, Any] = {}
    benchmark_interleaved(
        _jittery(), spec, NAMES, vocab_size=30522, progress=False, clock=lambda: float(next(ticks)),
        decide=lambda samples: Resolution(False, ["int8 vs float"], "never"), record=record,
    )
    first, other = record["shapes"]["b2xs8"], record["shapes"]["b1xs8"]
    assert first["stop"] == "time cap" and first["pending"] == ["int8 vs float"]
    # the budget goes where the decision is: the selection shape may use all of it, the other shape gets its minimum
    assert first["rounds"] > 20 and other["rounds"] == 5 and other["stop"] == "time cap"


def test_onnx_runtime_sessions_do_not_spin() -> None:
    from quant_workbench.config.recipe import EngineSpec
    from quant_workbench.runtime.onnxruntime import session_options

    so = session_options(EngineSpec())
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
