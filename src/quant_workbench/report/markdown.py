"""Run reports: report.json (the RunResult itself), report.md for people, and the plot of paired Δ accuracy
vs speed-up (report/sections/decisions.py, with the sections that show what decided the recommendation).

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

from quant_workbench.core.artifacts import write_json, write_text
from quant_workbench.core.results import LatencyStats, RunResult, VariantResult
from quant_workbench.measure.stats import ratio_interval
from quant_workbench.report.format import DASH, markdown_table, ms, one_line, pct, points
from quant_workbench.report.sections.decisions import (
    PLOT_RELPATH,
    aa_lines,
    benchmark_lines,
    evaluation_section,
    plot_delta_vs_speedup,
    selection_lines,
)
from quant_workbench.report.sections.engine import (
    engine_graph_section,
    engine_label,
    engines_section,
    reference_section,
    reference_verdicts,
    several_engines,
)
from quant_workbench.report.sections.formats import formats_section
from quant_workbench.report.sections.search import search_section

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


def _interval(low: float | None, high: float | None, fmt: str) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" ({low:{fmt}}–{high:{fmt}})"


def pct_ci(x: float | None, ci: Sequence[float] | None) -> str:
    """72.10 (70.1–74.0): a fraction as a percentage with its interval, when one was computed."""
    if x is None or not math.isfinite(x):
        return DASH
    return pct(x) + (_interval(100.0 * ci[0], 100.0 * ci[1], ".1f") if ci else "")


def points_ci(d: float | None, paired: Mapping[str, Any] | None) -> str:
    """−0.35 (−0.90 to +0.20): a difference in points with its paired interval. The paired Δ (on the examples
    both were scored on) is the point shown when there is one: a variant stopped early has fewer examples."""
    if paired and isinstance(paired.get("delta"), (int, float)):
        d = float(paired["delta"])
    if d is None or not math.isfinite(d):
        return DASH
    if not paired:
        return points(d)
    return f"{points(d)} ({100.0 * paired['delta_low']:+.2f} to {100.0 * paired['delta_high']:+.2f})"


def ms_ci(st: LatencyStats) -> str:
    return ms(st.p50_ms) + _interval(st.p50_low_ms, st.p50_high_ms, ".2f")


def speedup_ci(x: float | None, ci: Sequence[float] | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    return _speedup(x) + (_interval(ci[0], ci[1], ".2f") if ci else "")


def _speedup(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x:.2f}×"


def mb(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:.2f}"


def _cosine(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x:.4f}"


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
    return one_line(str(v))


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


def fenced(text: str) -> list[str]:
    # A fence longer than any backtick run inside keeps arbitrary error text from closing it early.
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text.rstrip("\n"), fence]


# ---------------------------------------------------------------------------------------------
# lookups shared by the Markdown report, the terminal table and the plot


def float_row(result: RunResult) -> VariantResult | None:
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


def metric_of(v: VariantResult | None, name: str) -> float | None:
    if v is None or v.status != "ok":
        return None
    x = v.metrics.get(name)
    return None if x is None else float(x)


def _cosine_of(v: VariantResult) -> float | None:
    return next((float(v.metrics[k]) for k in _COSINE_KEYS if k in v.metrics), None)


def metric_interval(v: VariantResult, name: str) -> Sequence[float] | None:
    ci = v.intervals.get(name) if v.status == "ok" else None
    return ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


def paired_of(v: VariantResult) -> Mapping[str, Any] | None:
    """The paired comparison with float, when the Δ it describes is the accuracy one shown."""
    cmp = v.intervals.get("vs_float") if v.status == "ok" else None
    return cmp if isinstance(cmp, Mapping) else None


def delta_of(v: VariantResult, ref: VariantResult | None, name: str) -> float | None:
    mine, theirs = metric_of(v, name), metric_of(ref, name)
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
    has_pairs = any(paired_of(v) for v in result.variants if v is not ref)
    header += ["Disagree / discordant"] if has_pairs else []
    header += [f"{_metric_label(m)} (%)" for m in extra]
    header += ["Cosine to float"] if has_cos else []
    header += ["Size (MB)"]
    rows = []
    for v in result.variants:
        name = v.name + (" (best)" if v.name == result.best_variant else "")
        scored = v.intervals.get("n") if v.status == "ok" else None
        full = (result.evaluation or {}).get("n")
        status: str = v.status if v.status == "ok" else "failed (see below)"
        if isinstance(scored, int) and isinstance(full, int) and scored < full:
            status = f"ok, stopped after {scored:,} examples"
        row = [
            name,
            *([engine_label(v)] if engines else []),
            v.precision,
            v.calibration_method or DASH,
            status,
            pct_ci(metric_of(v, primary), metric_interval(v, primary)),
            "reference" if v is ref else points_ci(delta_of(v, ref, primary), paired_of(v) if primary == "accuracy" else None),
        ]
        pair = paired_of(v)
        row += ([f"{pair['disagreements']} / {pair['discordant']}" if pair and v is not ref else DASH] if has_pairs else [])
        row += [pct_ci(metric_of(v, m), metric_interval(v, m)) for m in extra]
        row += [_cosine(_cosine_of(v)) if v.status == "ok" else DASH] if has_cos else []
        row += [mb(v.size_bytes)]
        rows.append(row)
    left = 5 if engines else 4
    right = [False] * left + [True] * (len(header) - left)
    lines = ["## Results", "", *markdown_table(header, rows, right), ""]
    level = next((v.intervals.get("level") for v in result.variants if v.intervals.get("level")), None)
    if level is not None:
        n = next((v.intervals.get("n") for v in result.variants if v.intervals.get("n")), "?")
        lines += [
            f"Intervals are {100 * (1 - level):g} % on {n} evaluation examples (fewer for a variant the evaluation stopped early: "
            "see Evaluation): Wilson for accuracy, bootstrap over examples for macro-F1, and for Δ vs float Tango's score interval "
            "for paired proportions on the examples both were scored on (extended to 0 when the exact McNemar test does not "
            "reject, so interval and test agree). Disagree = examples whose prediction differs from float's; discordant = "
            "examples exactly one of the two gets right (the only ones that move Δ).",
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
        "All variants were timed interleaved in one process, so they saw the same machine state. Speed-up = the "
        "median over rounds of float's time / the variant's time in that round. Intervals (95 % unless the recipe's "
        "selection.level says otherwise) are block bootstraps over rounds.",
        "",
        *benchmark_lines(result),
    ]
    for b, s in shapes:
        key = f"b{b}xs{s}"
        measured = [(v, st) for v in _ok(result) if (st := _latency(v, key)) is not None]
        iters = max(st.iterations for _, st in measured)
        stops = {st.stop for _, st in measured if st.stop}
        why = {"tolerance": "stopped when every speed-up interval was within the tolerance",
               "resolved": "stopped when every speed comparison that could change the selection was resolved against the speed margin",
               "time cap": "**stopped at the time cap** before its comparisons were resolved",
               "iteration cap": "**stopped at the iteration cap** before its comparisons were resolved",
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
                ms_ci(st),
                ms(st.p95_ms),
                ms(st.p99_ms),
                ms(st.mean_ms),
                f"{st.throughput_seq_per_s:.1f}",
                speedup_ci(_speedup_at(v, key, ref), v.speedup_interval_vs_float.get(key)),
            ]
            for v, st in measured
        ]
        # engines timed without their host<->device copies (TensorRT): the copy-inclusive time on its own line
        rows += [
            [f"{v.name} (end to end, copies included)", ms(st.end_to_end_p50_ms), DASH, DASH, DASH, DASH, DASH]
            for v, st in measured if st.end_to_end_p50_ms is not None
        ]
        lines += [*markdown_table(header, rows, [False] + [True] * 6), ""]
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
            *markdown_table(["engine", "used for", "TensorRT", "layers", "layers by precision", "build s"], trt_rows, [False, False, False, True, False, True]),
            "",
        ]
    triton = result.deployment.get("triton")
    if isinstance(triton, Mapping):
        lines += ["## Triton model repository", "", f"Written to `{triton.get('path')}` (validated against Triton's model-config schema).", ""]
        models = triton.get("models") or []
        if models:
            lines += [*markdown_table(["ensemble (text in)", "model", "kind", "note"], [[str(m.get("ensemble")), str(m.get("name")), str(m.get("kind")), str(m.get("note") or "")] for m in models]), ""]
    bench = result.deployment.get("triton_benchmark")
    if isinstance(bench, Mapping) and isinstance(bench.get("variants"), Mapping):
        rows = []
        for name, b in bench["variants"].items():
            seq, conc = b.get("sequential_batch1", {}), b.get("concurrent", {})
            rows.append([
                name, ms(seq.get("p50_ms")), ms(seq.get("p90_ms")), ms(conc.get("p50_ms")), ms(conc.get("p90_ms")),
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
            *markdown_table(["variant", "seq p50 ms", "seq p90 ms", "conc p50 ms", "conc p90 ms", "req/s", "mean server batch"], rows, [False] + [True] * 6),
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


def _speedup_vs(fast: VariantResult, slow: VariantResult, key: str) -> tuple[float, list[float] | None] | None:
    """Speed-up of `fast` over `slow` at `key` from the same rounds (median per-round ratio and its interval)."""
    a, b = fast.latency_at(*_shape_of(key)), slow.latency_at(*_shape_of(key))
    if a is None or b is None:
        return None
    if a.samples_ms and b.samples_ms and len(a.samples_ms) == len(b.samples_ms):
        r = ratio_interval(b.samples_ms, a.samples_ms)
        return r.ratio, [r.low, r.high]
    return (b.p50_ms / a.p50_ms, None) if a.p50_ms > 0 else None


def _shape_of(key: str) -> tuple[int, int]:
    b, s = key.removeprefix("b").split("xs")
    return int(b), int(s)


def _summary(result: RunResult, ref: VariantResult | None) -> list[str]:
    lines = ["## Selected variant", ""]
    best = result.variant(result.best_variant) if result.best_variant else None
    if best is None:
        lines.append("No variant was selected.")
    else:
        primary = result.primary_metric
        parts = [f"{_metric_label(primary)} {pct_ci(metric_of(best, primary), metric_interval(best, primary))} %"]
        if best is not ref and delta_of(best, ref, primary) is not None:
            parts.append(f"{points_ci(delta_of(best, ref, primary), paired_of(best) if primary == 'accuracy' else None)} pts vs float")
        shape = _default_shape(result)
        if shape is not None:
            key = f"b{shape[0]}xs{shape[1]}"
            sp = _speedup_at(best, key, ref)
            if sp is not None:
                parts.append(f"{speedup_ci(sp, best.speedup_interval_vs_float.get(key))} p50 speed-up at batch {shape[0]}, seq {shape[1]}")
            base_name = result.selection.get("speed_baseline")
            base = result.variant(base_name) if base_name and base_name != (ref.name if ref else None) else None
            vs_base = _speedup_vs(best, base, key) if base is not None else None
            if vs_base is not None:
                parts.append(f"{speedup_ci(*vs_base)} vs the speed baseline {base_name}")
        if best.size_bytes and ref is not None and ref.size_bytes and best is not ref:
            ratio = ref.size_bytes / best.size_bytes
            parts.append(
                f"{ratio:.2f}× smaller than float" if ratio >= 1 else f"{1 / ratio:.2f}× larger than float on disk"
            )
        lines.append(f"**{best.name}**: " + ", ".join(parts) + ".")
    sel = result.selection
    if sel.get("outcome"):
        return [*lines, "", *selection_lines(result)]
    lines += ["", f"Selection rule: {result.selection_rule or '(not recorded)'}", ""]
    if sel:
        groups = sel.get("tie_groups") or {}
        first = (
            f"- Meet the search criterion ({sel['criterion']}, accuracy ≥ {pct(sel.get('threshold'))} %): {', '.join(sel.get('meeting') or []) or DASH}"
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
    ref = float_row(result)
    lines = [
        f"# Quantization report: {result.recipe_name}",
        "",
        f"Run `{result.run_id}` · task {result.task} · created {result.created_utc} · "
        f"recipe hash `{result.recipe_hash[:12]}` · schema v{result.schema_version}",
        "",
    ]
    if result.warnings:
        lines += ["## Warnings", "", *(f"- {one_line(w)}" for w in result.warnings), ""]
    lines += _summary(result, ref)
    lines += _results_section(result, ref)
    lines += evaluation_section(result)
    lines += formats_section(result)
    lines += ["## Δ accuracy vs speed-up", "", f"![paired Δ accuracy vs speed-up]({PLOT_RELPATH})", ""]
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
        lines += ["  " + x for x in fenced(v.error or "(no error message recorded)")] + [""]

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
        lines += [*markdown_table(["Package", "Version"], [[k, str(x)] for k, x in result.versions.items()]), ""]
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
    ref = float_row(result)
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
            pct_ci(metric_of(v, primary), metric_interval(v, primary)),
            "ref" if v is ref else points_ci(delta_of(v, ref, primary), paired_of(v) if primary == "accuracy" else None),
            _cosine(_cosine_of(v)) if ok else DASH,
        ]
        if small_key and small_key != big_key:
            st = _latency(v, small_key)
            row.append(ms(st.p50_ms if st else None))
        st_big = _latency(v, big_key) if big_key else None
        row.append(ms(st_big.p50_ms if st_big else None))
        row.append(speedup_ci(_speedup_at(v, big_key, ref), v.speedup_interval_vs_float.get(big_key)) if big_key and ok else DASH)
        row += [mb(v.size_bytes), v.status]
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
    out += aa_lines(result)
    if result.best_variant:
        # the reason names the groups; the rule itself is in report.md
        why = result.selection.get("reason") or result.selection_rule
        outcome = result.selection.get("outcome")
        out.append(f"* best: {result.best_variant}" + (f" [{outcome}]" if outcome else "") + (f" ({why})" if why else ""))
    if result.selection.get("warning"):
        out.append(f"warning: {result.selection['warning']}")
    out += [f"vs standard tools: {item['verdict']}" for item in reference_verdicts(result)]
    out += [f"warning: {one_line(w)}" for w in result.warnings]
    for v in result.variants:
        if v.status != "ok":
            err = one_line(v.error or "(no error message recorded)")
            out.append(f"{v.name} failed: {err[:300] + '…' if len(err) > 300 else err}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# plot

# ---------------------------------------------------------------------------------------------


def write_report(result: RunResult, run_dir: Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    # JSON first: it is the machine-readable record and must exist even if rendering fails later.
    json_path = write_json(run_dir / "report.json", result.to_dict())
    plot_path = plot_delta_vs_speedup(result, run_dir / PLOT_RELPATH)
    md_path = write_text(run_dir / "report.md", render_markdown(result))
    return {"json": json_path, "markdown": md_path, "plot": plot_path}
