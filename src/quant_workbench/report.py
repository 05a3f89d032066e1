"""Run reports: report.json (the RunResult itself), report.md for people, and an accuracy-vs-latency plot.

Metrics in `VariantResult.metrics` are fractions in [0, 1] and are shown as percentages; a delta
between two of them is shown in percentage points. Cosine similarities are not percentages and keep
four decimals, because the interesting differences (0.9991 vs 0.9874) would vanish at two.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .format_notes import formats_section
from .io import atomic_path, write_json, write_text
from .report_engine import (
    engine_graph_section,
    engine_label,
    engines_section,
    reference_section,
    reference_verdicts,
    several_engines,
)
from .report_search import search_section
from .results import LatencyStats, RunResult, VariantResult

PLOT_RELPATH = "plots/accuracy_vs_latency.png"
DASH = "—"

_PERCENT_METRICS = ("accuracy", "macro_f1", "agreement")
_COSINE_KEYS = ("cosine_to_float", "cosine")
_METRIC_LABELS = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "agreement": "Agreement",
    "cosine_to_float": "Cosine",
    "cosine": "Cosine",
}
# Lists longer than this are summarised (count + worst) so that per-layer or per-sample fidelity
# dumps don't turn the report into pages of numbers.
_INLINE_LIST_MAX = 8
_MAX_DEPTH = 4
# Names whose values get worse as they get smaller; everything else (errors, diffs, mse) gets worse
# as it grows.
_HIGHER_IS_BETTER_HINTS = ("cos", "sim", "agree", "acc", "f1", "snr", "score", "match")


# ---------------------------------------------------------------------------------------------
# formatting helpers


def _metric_label(name: str) -> str:
    return _METRIC_LABELS.get(name, name.replace("_", " "))


def _pct(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{100.0 * x:.2f}"


def _points(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{100.0 * x:+.2f}"


def _ms(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _interval(low: float | None, high: float | None, fmt: str) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" ({low:{fmt}}–{high:{fmt}})"


def _pct_ci(x: float | None, ci: Sequence[float] | None) -> str:
    """72.10 (70.1–74.0): a fraction as a percentage with its interval, when one was computed."""
    if x is None or not math.isfinite(x):
        return DASH
    return _pct(x) + (_interval(100.0 * ci[0], 100.0 * ci[1], ".1f") if ci else "")


def _points_ci(d: float | None, paired: Mapping[str, Any] | None) -> str:
    """−0.35 (−0.90 to +0.20): a difference in points with its paired interval."""
    if d is None or not math.isfinite(d):
        return DASH
    if not paired:
        return _points(d)
    return f"{_points(d)} ({100.0 * paired['delta_low']:+.2f} to {100.0 * paired['delta_high']:+.2f})"


def _ms_ci(st: LatencyStats) -> str:
    return _ms(st.p50_ms) + _interval(st.p50_low_ms, st.p50_high_ms, ".2f")


def _speedup_ci(x: float | None, ci: Sequence[float] | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return _speedup(x) + (_interval(ci[0], ci[1], ".2f") if ci else "")


def _speedup(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x:.2f}×"


def _mb(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:.2f}"


def _cosine(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x:.4f}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    """Make text safe inside a Markdown table cell: no line breaks, escaped pipes."""
    return _one_line(text).replace("\\", "\\\\").replace("|", "\\|")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> list[str]:
    right = right or [False] * len(header)
    sep = ["---:" if r else "---" for r in right]
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _fmt_scalar(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if hasattr(v, "item"):  # numpy scalars that slipped into a dict
        return _fmt_scalar(v.item())
    return _one_line(str(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _higher_is_better(name: str) -> bool:
    low = name.lower()
    return any(h in low for h in _HIGHER_IS_BETTER_HINTS)


def _worst_number(name: str, values: Sequence[float]) -> tuple[str, float | None]:
    finite = [float(x) for x in values if math.isfinite(float(x))]
    if not finite:
        return "min", None
    return ("min", min(finite)) if _higher_is_better(name) else ("max", max(finite))


def _inline(v: Any, depth: int = 0) -> str:
    """Compact one-line rendering for values nested too deep for bullets."""
    if isinstance(v, Mapping):
        if depth >= _MAX_DEPTH:
            return f"{{{len(v)} keys}}"
        return "{" + ", ".join(f"{k}={_inline(x, depth + 1)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return _summarise_list("", list(v), depth + 1)
    return _fmt_scalar(v)


def _rank_field(items: Sequence[Mapping[str, Any]]) -> str | None:
    """The numeric field that decides which entry of a list of records is the worst."""
    numeric = [k for k, x in items[0].items() if _is_number(x) and all(_is_number(it.get(k)) for it in items)]
    quality = [
        k for k in numeric if any(h in k.lower() for h in ("cos", "mse", "err", "diff", "snr", "agree"))
    ]
    candidates = quality or numeric
    return candidates[0] if candidates else None


def _summarise_list(key: str, items: list[Any], depth: int = 0) -> str:
    if not items:
        return "(none)"
    if all(_is_number(x) for x in items):
        if len(items) <= _INLINE_LIST_MAX:
            return ", ".join(_fmt_scalar(x) for x in items)
        which, worst = _worst_number(key, items)
        finite = [float(x) for x in items if math.isfinite(float(x))]
        nonfinite = len(items) - len(finite)
        text = f"{len(items)} values; worst ({which}) {_fmt_scalar(worst)}"
        if finite:
            text += f", mean {_fmt_scalar(sum(finite) / len(finite))}"
        if nonfinite:
            text += f", {nonfinite} not finite"
        return text
    if all(isinstance(x, Mapping) for x in items):
        field = _rank_field(items) if items[0] else None
        if field is None:
            return f"{len(items)} entries; first: {_inline(items[0], depth)}"
        values = [float(it[field]) for it in items]
        which, worst = _worst_number(field, values)
        idx = values.index(worst) if worst is not None else 0
        return f"{len(items)} entries; worst by {field} ({which}): {_inline(items[idx], depth)}"
    shown = [_inline(x, depth) for x in items[:_INLINE_LIST_MAX]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", … (+{more} more)" if more else "")


def _bullets(d: Mapping[str, Any], depth: int = 0) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            if not v:
                lines.append(f"{pad}- {k}: (empty)")
            elif depth >= _MAX_DEPTH:
                lines.append(f"{pad}- {k}: {_inline(v, depth)}")
            else:
                lines.append(f"{pad}- {k}:")
                lines += _bullets(v, depth + 1)
        elif isinstance(v, (list, tuple)):
            items = list(v)
            # A few records read better one per line than squeezed into a summary.
            if 0 < len(items) <= 3 and all(isinstance(x, Mapping) for x in items) and depth < _MAX_DEPTH:
                lines.append(f"{pad}- {k}:")
                lines += [f"{pad}  - {_inline(x, depth + 1)}" for x in items]
            else:
                lines.append(f"{pad}- {k}: {_summarise_list(str(k), items, depth)}")
        else:
            lines.append(f"{pad}- {k}: {_fmt_scalar(v)}")
    return lines


def _fenced(text: str) -> list[str]:
    # A fence longer than any backtick run inside keeps arbitrary error text from closing it early.
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text.rstrip("\n"), fence]


# ---------------------------------------------------------------------------------------------
# lookups shared by the Markdown report, the terminal table and the plot


def _float_variant(result: RunResult) -> VariantResult | None:
    return result.variant("float") or next((v for v in result.variants if v.precision == "float32"), None)


def _ok(result: RunResult) -> list[VariantResult]:
    return [v for v in result.variants if v.status == "ok"]


def _shapes(result: RunResult) -> list[tuple[int, int]]:
    return sorted({(s.batch_size, s.seq_length) for v in _ok(result) for s in v.latency})


def _default_shape(
    result: RunResult, batch_size: int | None = None, seq_length: int | None = None
) -> tuple[int, int] | None:
    """(batch, seq) to summarise at: the largest measured unless pinned by the caller."""
    shapes = _shapes(result)
    if batch_size is not None and seq_length is not None:
        return batch_size, seq_length
    if batch_size is not None:
        shapes = [x for x in shapes if x[0] == batch_size]
    if seq_length is not None:
        shapes = [x for x in shapes if x[1] == seq_length]
    if not shapes:
        return None
    b = max(x[0] for x in shapes)
    return b, max(x[1] for x in shapes if x[0] == b)


def _latency(v: VariantResult, key: str) -> LatencyStats | None:
    return next((s for s in v.latency if s.key == key), None)


def _speedup_at(v: VariantResult, key: str, ref: VariantResult | None) -> float | None:
    if key in v.speedup_vs_float:
        return v.speedup_vs_float[key]
    if ref is None:
        return None
    if ref is v:
        return 1.0
    mine, theirs = _latency(v, key), _latency(ref, key)
    if mine is None or theirs is None or mine.p50_ms <= 0:
        return None
    return theirs.p50_ms / mine.p50_ms


def _metric(v: VariantResult | None, name: str) -> float | None:
    if v is None or v.status != "ok":
        return None
    x = v.metrics.get(name)
    return None if x is None else float(x)


def _cosine_of(v: VariantResult) -> float | None:
    return next((float(v.metrics[k]) for k in _COSINE_KEYS if k in v.metrics), None)


def _metric_ci(v: VariantResult, name: str) -> Sequence[float] | None:
    ci = v.intervals.get(name) if v.status == "ok" else None
    return ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


def _paired(v: VariantResult) -> Mapping[str, Any] | None:
    """The paired comparison with float, when the Δ it describes is the accuracy one shown."""
    cmp = v.intervals.get("vs_float") if v.status == "ok" else None
    return cmp if isinstance(cmp, Mapping) else None


def _delta(v: VariantResult, ref: VariantResult | None, name: str) -> float | None:
    mine, theirs = _metric(v, name), _metric(ref, name)
    if v is ref or mine is None or theirs is None:
        return None
    return mine - theirs


# ---------------------------------------------------------------------------------------------
# Markdown


def _results_section(result: RunResult, ref: VariantResult | None) -> list[str]:
    primary = result.primary_metric
    extra = [
        m for m in ("macro_f1", "agreement") if m != primary and any(m in v.metrics for v in result.variants)
    ]
    has_cos = any(_cosine_of(v) is not None for v in result.variants)
    engines = several_engines(result)  # issue 17: rows of several engines / inference precisions
    header = [
        "Variant",
        *(["Engine"] if engines else []),
        "Precision",
        "Calibration",
        "Status",
        f"{_metric_label(primary)} (%)",
        "Δ vs float (pts)",
    ]
    has_pairs = any(_paired(v) for v in result.variants if v is not ref)
    header += ["Disagree / discordant"] if has_pairs else []
    header += [f"{_metric_label(m)} (%)" for m in extra]
    header += ["Cosine to float"] if has_cos else []
    header += ["Size (MB)"]
    rows = []
    for v in result.variants:
        name = v.name + (" (best)" if v.name == result.best_variant else "")
        row = [
            name,
            *([engine_label(v)] if engines else []),
            v.precision,
            v.calibration_method or DASH,
            v.status if v.status == "ok" else "failed (see below)",
            _pct_ci(_metric(v, primary), _metric_ci(v, primary)),
            "reference" if v is ref else _points_ci(_delta(v, ref, primary), _paired(v) if primary == "accuracy" else None),
        ]
        pair = _paired(v)
        row += ([f"{pair['disagreements']} / {pair['discordant']}" if pair and v is not ref else DASH] if has_pairs else [])
        row += [_pct_ci(_metric(v, m), _metric_ci(v, m)) for m in extra]
        row += [_cosine(_cosine_of(v)) if v.status == "ok" else DASH] if has_cos else []
        row += [_mb(v.size_bytes)]
        rows.append(row)
    left = 5 if engines else 4
    right = [False] * left + [True] * (len(header) - left)
    lines = ["## Results", "", *_table(header, rows, right), ""]
    level = next((v.intervals.get("level") for v in result.variants if v.intervals.get("level")), None)
    if level is not None:
        n = next((v.intervals.get("n") for v in result.variants if v.intervals.get("n")), "?")
        lines += [
            f"Intervals are {100 * (1 - level):g} % on {n} evaluation examples: Wilson for accuracy, bootstrap over "
            "examples for macro-F1, and a paired bootstrap over the same examples for Δ vs float. Disagree = examples "
            "whose prediction differs from float's; discordant = examples exactly one of the two gets right (the only "
            "ones that move Δ; the exact McNemar test on them decides ties in the selection).",
            "",
        ]
    shown = {primary, *extra, *_COSINE_KEYS}
    others = {v.name: {k: x for k, x in v.metrics.items() if k not in shown} for v in result.variants}
    others = {k: x for k, x in others.items() if x}
    if others:
        lines += ["Other metrics:", "", *_bullets(others), ""]
    return lines


def _latency_section(result: RunResult, ref: VariantResult | None) -> list[str]:
    lines = ["## Latency", ""]
    shapes = _shapes(result)
    if not shapes:
        return [*lines, "No latency was measured.", ""]
    lines += [
        "All variants were timed interleaved (round-robin within each iteration) in one process, so they "
        "saw the same machine state. Speed-up = float p50 / variant p50. Intervals (95 % unless the recipe's "
        "selection.level says otherwise) are percentile bootstraps over iterations; a speed-up's resamples keep "
        "each round's float and variant times together.",
        "",
    ]
    for b, s in shapes:
        key = f"b{b}xs{s}"
        measured = [(v, st) for v in _ok(result) if (st := _latency(v, key)) is not None]
        iters = max(st.iterations for _, st in measured)
        stops = {st.stop for _, st in measured if st.stop}
        why = {"tolerance": "stopped when every speed-up interval was within the tolerance",
               "time cap": "**stopped at the time cap** before the speed-up intervals reached the tolerance",
               "iteration cap": "**stopped at the iteration cap** before the speed-up intervals reached the tolerance",
               "fixed": "fixed count"}
        stop_text = "; ".join(why.get(x, x) for x in sorted(stops))
        lines += [f"### Batch {b} × sequence length {s} ({iters} timed iterations{', ' + stop_text if stop_text else ''})", ""]
        header = [
            "Variant",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "mean (ms)",
            "Throughput (seq/s)",
            "Speed-up vs float",
        ]
        rows = [
            [
                v.name,
                _ms_ci(st),
                _ms(st.p95_ms),
                _ms(st.p99_ms),
                _ms(st.mean_ms),
                f"{st.throughput_seq_per_s:.1f}",
                _speedup_ci(_speedup_at(v, key, ref), v.speedup_interval_vs_float.get(key)),
            ]
            for v, st in measured
        ]
        lines += [*_table(header, rows, [False] + [True] * 6), ""]
    return lines


def _per_variant_section(title: str, result: RunResult, attr: str, empty: str) -> list[str]:
    lines = [f"## {title}", ""]
    found = False
    for v in result.variants:
        data = getattr(v, attr)
        if data:
            found = True
            lines += [f"### {v.name}", "", *_bullets(data), ""]
    return lines if found else [*lines, empty, ""]


def _tensorrt_rows(result: RunResult) -> list[list[str]]:
    """One row per TensorRT engine: built by the run (engine.runtime: tensorrt) or by deploy."""
    rows: list[list[str]] = []
    sources: list[tuple[str, str, Mapping[str, Any]]] = []
    for v in result.variants:
        if isinstance(v.engine.get("tensorrt_layers"), Mapping):
            sources.append((v.name, "evaluate + benchmark", {**v.engine["tensorrt_layers"], "seconds": v.engine.get("build_seconds"), "version": v.engine.get("tensorrt_version")}))
    for name, info in (result.deployment.get("tensorrt_engines") or {}).items():
        if isinstance(info, Mapping):
            sources.append((name, "Triton tensorrt_plan", info))
    for name, used_for, info in sources:
        by = info.get("by_precision") or {}
        precisions = ", ".join(f"{k} {n}" for k, n in by.items()) or DASH
        seconds = info.get("seconds")
        rows.append([name, used_for, str(info.get("version") or DASH), str(info.get("layers", DASH)), precisions, f"{seconds:.1f}" if isinstance(seconds, (int, float)) else DASH])
    return rows


def _deployment_section(result: RunResult) -> list[str]:
    lines: list[str] = []
    trt_rows = _tensorrt_rows(result)
    if trt_rows:
        lines += [
            "## TensorRT engines",
            "",
            "Layer precisions from TensorRT's engine inspector (a layer counts as INT8/FP8 when any of its tensors is); "
            "the full per-layer report is `<engine>.layers.json` beside each plan.",
            "",
            *_table(["engine", "used for", "TensorRT", "layers", "layers by precision", "build s"], trt_rows, [False, False, False, True, False, True]),
            "",
        ]
    triton = result.deployment.get("triton")
    if isinstance(triton, Mapping):
        lines += ["## Triton model repository", "", f"Written to `{triton.get('path')}` (validated against Triton's model-config schema).", ""]
        models = triton.get("models") or []
        if models:
            lines += [*_table(["ensemble (text in)", "model", "kind", "note"], [[str(m.get("ensemble")), str(m.get("name")), str(m.get("kind")), str(m.get("note") or "")] for m in models]), ""]
    bench = result.deployment.get("triton_benchmark")
    if isinstance(bench, Mapping) and isinstance(bench.get("variants"), Mapping):
        rows = []
        for name, b in bench["variants"].items():
            seq, conc = b.get("sequential_batch1", {}), b.get("concurrent", {})
            rows.append([
                name, _ms(seq.get("p50_ms")), _ms(seq.get("p90_ms")), _ms(conc.get("p50_ms")), _ms(conc.get("p90_ms")),
                f"{conc.get('throughput_req_per_s', 0):.1f}", f"{conc.get('mean_server_batch', 0):.2f}",
            ])
        clients = next((b.get("concurrent", {}).get("clients") for b in bench["variants"].values()), None)
        sp = bench.get("speedup_int8_vs_float") or {}
        lines += [
            "## Served through Triton (text in, tokenization on the server)",
            "",
            f"`bench/triton_latency.py`, {bench.get('protocol', '?')}, {bench.get('texts', {}).get('count', '?')} texts of the evaluation split; "
            f"sequential = one request at a time (batch 1); concurrent = {clients} client threads, dynamic batching on the server. "
            f"Machine: {bench.get('hardware', {}).get('cpu', '?')}; client and server share its cores.",
            "",
            *_table(["variant", "seq p50 ms", "seq p90 ms", "conc p50 ms", "conc p90 ms", "req/s", "mean server batch"], rows, [False] + [True] * 6),
            "",
        ]
        if sp:
            lines += [f"Quantized vs float: sequential p50 {_speedup(sp.get('sequential_p50'))}, concurrent p50 {_speedup(sp.get('concurrent_p50'))}, throughput {_speedup(sp.get('concurrent_throughput'))}.", ""]
    return lines


def update_report(run_dir: Path | str, key: str, value: Any) -> dict[str, Path]:
    """Record a later stage's output (deploy, Triton benchmark) in a finished run's report."""
    run_dir = Path(run_dir)
    result = RunResult.from_dict(json.loads((run_dir / "report.json").read_text()))
    result.deployment[key] = value
    return write_report(result, run_dir)


def _summary(result: RunResult, ref: VariantResult | None) -> list[str]:
    lines = ["## Selected variant", ""]
    best = result.variant(result.best_variant) if result.best_variant else None
    if best is None:
        lines.append("No variant was selected.")
    else:
        primary = result.primary_metric
        parts = [f"{_metric_label(primary)} {_pct_ci(_metric(best, primary), _metric_ci(best, primary))} %"]
        if best is not ref and _delta(best, ref, primary) is not None:
            parts.append(f"{_points_ci(_delta(best, ref, primary), _paired(best) if primary == 'accuracy' else None)} pts vs float")
        shape = _default_shape(result)
        if shape is not None:
            key = f"b{shape[0]}xs{shape[1]}"
            sp = _speedup_at(best, key, ref)
            if sp is not None:
                parts.append(f"{_speedup_ci(sp, best.speedup_interval_vs_float.get(key))} p50 speed-up at batch {shape[0]}, seq {shape[1]}")
        if best.size_bytes and ref is not None and ref.size_bytes and best is not ref:
            ratio = ref.size_bytes / best.size_bytes
            parts.append(
                f"{ratio:.2f}× smaller than float" if ratio >= 1 else f"{1 / ratio:.2f}× larger than float on disk"
            )
        lines.append(f"**{best.name}**: " + ", ".join(parts) + ".")
    lines += ["", f"Selection rule: {result.selection_rule or '(not recorded)'}", ""]
    sel = result.selection
    if sel:
        groups = sel.get("tie_groups") or {}
        first = (
            f"- Meet the search criterion ({sel['criterion']}, accuracy ≥ {_pct(sel.get('threshold'))} %): {', '.join(sel.get('meeting') or []) or DASH}"
            if sel.get("criterion")
            else f"- Tied on accuracy with the most accurate ({sel.get('most_accurate') or DASH}): {', '.join(groups.get('accuracy') or []) or DASH}"
        )
        lines += [
            first,
            f"- Of those, tied on speed with the fastest ({sel.get('fastest') or DASH}, at {sel.get('shape') or 'no measured shape'}): "
            f"{', '.join(groups.get('speed') or []) or DASH}",
            f"- Why: {sel.get('reason') or DASH}",
            "",
        ]
    return lines


def render_markdown(result: RunResult) -> str:
    ref = _float_variant(result)
    lines = [
        f"# Quantization report: {result.recipe_name}",
        "",
        f"Run `{result.run_id}` · task {result.task} · created {result.created_utc} · "
        f"recipe hash `{result.recipe_hash[:12]}` · schema v{result.schema_version}",
        "",
    ]
    lines += _summary(result, ref)
    lines += _results_section(result, ref)
    lines += formats_section(result)
    lines += ["## Accuracy vs latency", "", f"![accuracy vs latency]({PLOT_RELPATH})", ""]
    lines += _latency_section(result, ref)
    lines += engines_section(result)
    lines += reference_section(result)
    lines += engine_graph_section(result)
    lines += _per_variant_section("Fidelity", result, "fidelity", "No fidelity checks were recorded.")
    lines += _per_variant_section("Engine", result, "engine", "No engine information was recorded.")
    lines += _deployment_section(result)
    if result.search:
        lines += search_section(result.search).strip("\n").split("\n") + [""]

    failed = [v for v in result.variants if v.status != "ok"]
    lines += ["## Failed variants", ""]
    if not failed:
        lines += ["None.", ""]
    for v in failed:
        lines += [f"- **{v.name}** ({v.precision}, calibration {v.calibration_method or DASH}):", ""]
        lines += ["  " + x for x in _fenced(v.error or "(no error message recorded)")] + [""]

    for kind, info in (result.training or {}).items():
        lines += [f"## Training: {kind}", ""]
        if isinstance(info, dict) and info.get("curve"):
            lines += [f"![{kind} training curve]({info['curve']})", ""]
        lines += [*_bullets({k: x for k, x in info.items() if k != "curve"} if isinstance(info, dict) else {"info": info}), ""]
    lines += ["## Calibration", ""]
    lines += [*(_bullets(result.calibration) or ["No calibration was run."]), ""]
    lines += ["## Data", ""]
    lines += [*(_bullets(result.data) or ["No data description was recorded."]), ""]
    lines += ["## Machine", ""]
    lines += [*(_bullets(result.hardware) or ["Not recorded."]), ""]
    lines += ["## Versions", ""]
    if result.versions:
        lines += [*_table(["Package", "Version"], [[k, str(x)] for k, x in result.versions.items()]), ""]
    else:
        lines += ["Not recorded.", ""]
    if result.timings_s:
        lines += ["## Stage timings", ""]
        lines += [f"- {k}: {x:.2f} s" for k, x in result.timings_s.items()] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# terminal table


def results_table(result: RunResult) -> str:
    """Short fixed-width table for the terminal, plus one line per failed variant."""
    ref = _float_variant(result)
    primary = result.primary_metric
    shapes = _shapes(result)
    big = _default_shape(result)
    seq = big[1] if big else None
    small_b = min((b for b, s in shapes if s == seq), default=None)
    small_key = f"b{small_b}xs{seq}" if small_b is not None else None
    big_key = f"b{big[0]}xs{big[1]}" if big else None
    header = ["variant", f"{primary} %", "Δ vs float (pts)", "cosine"]
    if small_key and small_key != big_key:
        header.append(f"p50 b{small_b} ms")
    header += [f"p50 b{big[0]} ms" if big else "p50 ms", "speed-up", "size MB", "status"]
    rows: list[list[str]] = []
    for v in result.variants:
        name = v.name + (" *" if v.name == result.best_variant else "")
        ok = v.status == "ok"
        row = [
            name,
            _pct_ci(_metric(v, primary), _metric_ci(v, primary)),
            "ref" if v is ref else _points_ci(_delta(v, ref, primary), _paired(v) if primary == "accuracy" else None),
            _cosine(_cosine_of(v)) if ok else DASH,
        ]
        if small_key and small_key != big_key:
            st = _latency(v, small_key)
            row.append(_ms(st.p50_ms if st else None))
        st_big = _latency(v, big_key) if big_key else None
        row.append(_ms(st_big.p50_ms if st_big else None))
        row.append(_speedup_ci(_speedup_at(v, big_key, ref), v.speedup_interval_vs_float.get(big_key)) if big_key and ok else DASH)
        row += [_mb(v.size_bytes), v.status]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, len(header) - 1}

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
    if big:
        out.append(f"speed-up = float p50 / variant p50 at batch {big[0]}, seq {big[1]}")
    if result.best_variant:
        # the reason names the tie groups; the rule itself is in report.md
        why = result.selection.get("reason") or result.selection_rule
        out.append(f"* best: {result.best_variant}" + (f" ({why})" if why else ""))
    out += [f"vs standard tools: {item['verdict']}" for item in reference_verdicts(result)]
    for v in result.variants:
        if v.status != "ok":
            err = _one_line(v.error or "(no error message recorded)")
            out.append(f"{v.name} failed: {err[:300] + '…' if len(err) > 300 else err}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# plot

_MARKERS = {"float32": ("s", "0.35"), "int8": ("o", "C0"), "fp8": ("D", "C2")}
_MARKER_AREA = 60.0  # points²
_SELECTED_AREA = 320.0
# Label offsets tried around a point, nearest first (points); the direction order is fixed, so the
# placement is a pure function of the data: the same report always draws the same picture.
_LABEL_RADII = (6.0, 14.0, 24.0, 36.0, 52.0, 72.0, 96.0)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_LABEL_PAD_PX = 2.0


def _overlap_area(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(ax: Any, renderer: Any, labels: Sequence[tuple[str, float, float, bool]], obstacles: Sequence[Any], soft: Sequence[Any]) -> list[Any]:
    """Annotate (text, x, y, bold) so no label overlaps another label, a point (`obstacles`, display
    bboxes) or leaves the axes; error bars (`soft`) are avoided when some position allows it.

    Greedy over candidate offsets, nearest first: the first position free of everything wins, else
    the first free of the hard obstacles, else the one overlapping least. Labels far from their point
    get a thin leader line. Call after the layout is final: positions are measured in pixels.
    """
    from matplotlib.transforms import Bbox

    area = ax.get_window_extent(renderer)
    placed: list[Any] = []
    out = []
    for text, x, y, bold in labels:
        best: tuple[tuple[int, float], float, int, int] | None = None
        for radius in _LABEL_RADII:
            for dx, dy in _LABEL_DIRECTIONS:
                ann = ax.annotate(
                    text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points", fontsize=8,
                    fontweight="bold" if bold else "normal",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                )
                box = ann.get_window_extent(renderer).padded(_LABEL_PAD_PX)
                ann.remove()
                outside = box.x0 < area.x0 or box.x1 > area.x1 or box.y0 < area.y0 or box.y1 > area.y1
                hard = sum(_overlap_area(box, o) for o in [*placed, *obstacles]) + (1e9 if outside else 0.0)
                soft_hits = sum(_overlap_area(box, o) for o in soft)
                # rank: free of everything < free of hard obstacles < least hard overlap
                rank = (0 if hard == 0 and soft_hits == 0 else 1 if hard == 0 else 2, hard)
                if best is None or rank < best[0]:
                    best = (rank, radius, dx, dy)
            if best is not None and best[0][0] == 0:
                break
        assert best is not None
        _, radius, dx, dy = best
        ann = ax.annotate(
            text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points", fontsize=8,
            fontweight="bold" if bold else "normal",
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 5} if radius > _LABEL_RADII[0] else None,
            zorder=5,
        )
        placed.append(Bbox(ann.get_window_extent(renderer).padded(_LABEL_PAD_PX).get_points()))
        out.append(ann)
    return out


def accuracy_vs_latency_figure(result: RunResult, batch_size: int | None = None, seq_length: int | None = None) -> Any:
    """The plot of `plot_accuracy_vs_latency` as a matplotlib Figure (with an Agg canvas), not yet saved.

    Error bars: the accuracy interval (report.json `intervals`) and the p50 interval over iterations.
    """
    # The object-oriented API with an explicit Agg canvas renders headless and never touches
    # pyplot's global backend, so calling this from a notebook or GUI app leaves the host alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

    primary = result.primary_metric
    shape = _default_shape(result, batch_size, seq_length)
    ref = _float_variant(result)

    fig = Figure(figsize=(8.5, 5.5), dpi=120)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points: list[tuple[VariantResult, LatencyStats, float]] = []
    if shape is not None:
        for v in _ok(result):
            st = v.latency_at(*shape)
            m = _metric(v, primary)
            if st is not None and m is not None:
                points.append((v, st, 100.0 * m))

    shape_text = f"batch {shape[0]}, seq {shape[1]}" if shape else "no latency measured"
    ax.set_title(f"{result.recipe_name}: {_metric_label(primary)} vs p50 latency ({shape_text})", fontsize=11)
    ax.set_xlabel("p50 latency (ms), lower is better; bars: interval over iterations")
    ax.set_ylabel(f"{_metric_label(primary)} (%), higher is better; bars: interval")
    ax.grid(True, alpha=0.3)

    if not points:
        ax.text(0.5, 0.5, "no variant has both a metric and a latency here", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return fig

    ref_point = next((p for p in points if p[0] is ref), None)
    if ref_point is not None:
        ax.axhline(ref_point[2], color="0.6", linestyle="--", linewidth=1, label=f"float {_metric_label(primary)}")
    seen: set[str] = set()
    bars = []
    for v, st, y in points:
        marker, color = _MARKERS.get(v.precision, ("^", "C1"))
        label = None if v.precision in seen else v.precision
        seen.add(v.precision)
        ci = _metric_ci(v, primary)
        yerr = [[y - 100.0 * ci[0]], [100.0 * ci[1] - y]] if ci else None
        xerr = (
            [[st.p50_ms - st.p50_low_ms], [st.p50_high_ms - st.p50_ms]]
            if st.p50_low_ms is not None and st.p50_high_ms is not None else None
        )
        bars.append(ax.errorbar([st.p50_ms], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, elinewidth=1, capsize=3, alpha=0.6, zorder=2))
        ax.scatter([st.p50_ms], [y], marker=marker, color=color, s=_MARKER_AREA, zorder=3, label=label)
        if v.name == result.best_variant:
            ax.scatter([st.p50_ms], [y], s=_SELECTED_AREA, facecolors="none", edgecolors="C3", linewidths=2, zorder=4, label="selected")
    # Limits are fixed before labels are placed: placement works in pixels.
    highs = [st.p50_high_ms if st.p50_high_ms is not None else st.p50_ms for _, st, _ in points]
    # Starting the axis at zero keeps distances between points proportional to the speed-up.
    ax.set_xlim(0, max(highs) * 1.45)
    ys = [y for *_, y in points] + [100.0 * bound for v, _, _ in points for bound in (_metric_ci(v, primary) or [])]
    low, high = min(ys), max(ys)
    pad = max(high - low, 0.5) * 0.35
    ax.set_ylim(low - pad, high + pad)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    fig.tight_layout()
    renderer = canvas.get_renderer()

    to_px = ax.transData.transform
    obstacles = []
    for v, st, y in points:
        px, py = to_px((st.p50_ms, y))
        area = _SELECTED_AREA if v.name == result.best_variant else _MARKER_AREA
        r = (area ** 0.5) / 2.0 * fig.dpi / 72.0 + 1.0
        obstacles.append(Bbox([[px - r, py - r], [px + r, py + r]]))
    soft = [Bbox(line.get_window_extent(renderer).get_points()) for bar in bars for line in bar.lines[2]]
    # Top of the plot first: the most accurate variants, which readers look for, get the nearest spots.
    order = sorted(points, key=lambda p: (-p[2], p[1].p50_ms, p[0].name))
    labels = [(f"{v.name}\n{y:.2f} %, {st.p50_ms:.2f} ms", st.p50_ms, y, v.name == result.best_variant) for v, st, y in order]
    _place_labels(ax, renderer, labels, obstacles, soft)
    return fig


def plot_accuracy_vs_latency(
    result: RunResult, path: Path, batch_size: int | None = None, seq_length: int | None = None
) -> Path:
    """Primary metric (%) against p50 latency (ms) at one (batch, seq), one labelled point per ok variant,
    error bars on both axes, labels placed so that none overlaps another label or a point."""
    path = Path(path)
    fig = accuracy_vs_latency_figure(result, batch_size, seq_length)
    with atomic_path(path) as tmp:
        # Without a Software entry the PNG carries no version string or timestamp: same input, same bytes.
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


# ---------------------------------------------------------------------------------------------


def write_report(result: RunResult, run_dir: Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    # JSON first: it is the machine-readable record and must exist even if rendering fails later.
    json_path = write_json(run_dir / "report.json", result.to_dict())
    plot_path = plot_accuracy_vs_latency(result, run_dir / PLOT_RELPATH)
    md_path = write_text(run_dir / "report.md", render_markdown(result))
    return {"json": json_path, "markdown": md_path, "plot": plot_path}
