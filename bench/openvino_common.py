"""Shared by bench/openvino_layouts.py and bench/openvino_table.py: a fair timing loop over engines of
different runtimes in one process, and its summary.

Fair means: every engine timed at the same shape in the same rounds, a fresh random order each round
(no engine always runs right after the same neighbour), the garbage collector off while timing, ONNX
Runtime sessions with `allow_spinning = 0` (the workbench's session options), OpenVINO with explicit
threads/streams/hint, and two sessions of the same reference model (an A/A pair: their ratio must be
1 within its interval, or the loop itself is unfair). Ratios come with intervals that resample whole
rounds (stats.ratio_interval), so a round slowed by another tenant slows both sides of a ratio.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quant_workbench.measure.latency import make_feed
from quant_workbench.measure.stats import median_interval, ratio_interval

Runner = Callable[[dict[str, np.ndarray]], object]


def machine() -> dict[str, Any]:
    """The machine named in every table: CPU model, cores, load when measured."""
    from quant_workbench.core.machine import hardware, precision_facts

    info = hardware()
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info.update(precision_facts())
    info["python"] = platform.python_version()
    return info


def timed_rounds(
    runners: Mapping[str, Runner],
    shapes: Sequence[tuple[int, int]],
    input_names: Sequence[str],
    vocab_size: int,
    *,
    rounds: int,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    predecessors: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per runner, per shape key (b32xs128): milliseconds of each round, rounds in the same order for all.
    `predecessors`, when given, is filled with the runner timed just before each call (None first in a round)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
    for b, s in shapes:
        key = f"b{b}xs{s}"
        feed = make_feed(b, s, input_names, vocab_size)
        for _ in range(warmup):
            for run in runners.values():
                run(feed)
        times: dict[str, list[float]] = {name: [] for name in runners}
        before: dict[str, list[str]] = {name: [] for name in runners}
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        try:
            for r in range(rounds):
                order = list(runners)
                rng.shuffle(order)
                for i, name in enumerate(order):
                    start = time.perf_counter()
                    runners[name](feed)
                    times[name].append((time.perf_counter() - start) * 1000.0)
                    before[name].append(order[i - 1] if i else "")
                if r in (0, rounds - 1) or (r + 1) % 10 == 0:
                    progress(f"  {key}: round {r + 1}/{rounds} ({time.perf_counter() - t0:.0f} s)")
        finally:
            gc.enable()
        for name, ms in times.items():
            out[name][key] = ms
            if predecessors is not None:
                predecessors.setdefault(name, {})[key] = before[name]
    return out


def after_effect(times: Mapping[str, Mapping[str, list[float]]], predecessors: Mapping[str, Mapping[str, list[str]]], victim: str, key: str, group: Callable[[str], str]) -> dict[str, Any]:
    """Median time of `victim` at `key` by the group of the runner timed just before it (e.g. 'openvino' /
    'onnxruntime'): whether one engine's idle threads slow the next engine's call (spinning)."""
    by: dict[str, list[float]] = {}
    for ms, prev in zip(times[victim][key], predecessors[victim][key], strict=True):
        if prev:
            by.setdefault(group(prev), []).append(ms)
    return {g: {"calls": len(v), "p50_ms": float(np.median(v)), "p50_interval_ms": list(median_interval(np.asarray(v)))} for g, v in sorted(by.items())}


def summarize(times: Mapping[str, Mapping[str, list[float]]], baselines: Sequence[str], level: float = 0.05) -> dict[str, Any]:
    """Medians with intervals and the ratio of each baseline's p50 to each runner's (speed-up) with its interval."""
    out: dict[str, Any] = {}
    for name, per_shape in times.items():
        row: dict[str, Any] = {}
        for key, ms in per_shape.items():
            lo, hi = median_interval(np.asarray(ms), level)
            entry: dict[str, Any] = {"p50_ms": float(np.median(ms)), "p50_low_ms": lo, "p50_high_ms": hi, "rounds": len(ms)}
            for base in baselines:
                if base in times and key in times[base] and base != name:
                    r = ratio_interval(times[base][key], ms, level)
                    entry[f"speedup_vs_{base}"] = [float(np.median(times[base][key]) / np.median(ms)), r.low, r.high]
            row[key] = entry
        out[name] = row
    return out


def fmt_ratio(entry: Sequence[float] | None) -> str:
    if not entry:
        return "—"
    x, lo, hi = entry
    return f"{x:.2f}× ({lo:.2f}–{hi:.2f})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def save(path: Path, data: Any) -> None:
    from quant_workbench.core.artifacts import write_json

    write_json(path, json.loads(json.dumps(data, default=str)))
