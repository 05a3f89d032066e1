"""Finished runs side by side (`quantize compare`, and the tables of `quantize sweep`'s report).

Everything here is read from each run's report.json (report_schema.load_report), so a comparison of runs
made by different recipes, at different times or by another version of the workbench shows exactly the
numbers their own reports show (the same formatting helpers render them). What the reports cannot say is
whether their latencies may be compared with each other: that needs the same machine, the same versions,
the same benchmark settings and runs timed one at a time. `comparability` says which runs share those
conditions, and `retime` measures the selected engine graphs (and floats) of several runs again, every
model in one process, interleaved in a fresh random order each round.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from quant_workbench.core.artifacts import atomic_path, hash_json
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.core.results import LatencyStats, RunResult, VariantResult
from quant_workbench.report.format import DASH, markdown_table
from quant_workbench.report.markdown import (
    delta_of,
    fenced,
    float_row,
    mb,
    metric_interval,
    metric_of,
    ms_ci,
    paired_of,
    pct_ci,
    points_ci,
    speedup_ci,
)
from quant_workbench.report.plot_labels import place_labels
from quant_workbench.report.schema import load_report

# selection.accuracy_margin's default (issue 16); used when the runs' recipes do not have the field yet
DEFAULT_ACCURACY_MARGIN = 0.005
# written into a run folder by `quantize sweep` after it ran that run: how many runs shared the machine
# while it was timed (1 = alone). A run made by a plain `quantize RECIPE.yaml` has none: "not recorded".
CONDITIONS_FILE = "benchmark_conditions.json"
CROSS_PLOT_RELPATH = "plots/accuracy_vs_latency_runs.png"
# benchmark settings that change how a latency is measured; the shapes are compared separately
_SHAPE_KEYS = ("batch_sizes", "seq_lengths")


class CompareError(WorkbenchError):
    """Runs that cannot be compared as asked (not finished, an engine graph missing, ...)."""


@dataclass
class RunEntry:
    """One finished run: its report, its resolved recipe (as data) and how its benchmark was run."""

    label: str
    run_dir: Path
    result: RunResult
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe.resolved.yaml; {} when missing or unreadable
    conditions: dict[str, Any] = field(default_factory=dict)  # CONDITIONS_FILE; {} when not run by a sweep
    settings: str = ""  # what distinguishes this run (a sweep's overrides); default: model, length, depth

    @property
    def float_variant(self) -> VariantResult | None:
        v = float_row(self.result)
        return v if v is not None and v.status == "ok" else None

    @property
    def selected(self) -> VariantResult | None:
        name = self.result.best_variant
        v = self.result.variant(name) if name else None
        return v if v is not None and v.status == "ok" else None

    @property
    def references(self) -> list[VariantResult]:
        return [v for v in self.result.variants if v.reference]

    @property
    def timing(self) -> str:
        """one at a time | in parallel | not recorded: whether other runs of a sweep shared the machine while this one was timed."""
        n = self.conditions.get("concurrent_runs")
        if not isinstance(n, int):
            return "not recorded"
        return "one at a time" if n <= 1 else "in parallel"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def default_settings(recipe: Mapping[str, Any]) -> str:
    model = recipe.get("model") or {}
    if not model:
        return DASH
    source = str(model.get("source", "?"))
    # package:<pkg>/<folder> names the model by its package; a local path by its last folder; a Hub id as it is
    short = source.removeprefix("package:") if source.startswith("package:") else Path(source).name if source.startswith((".", "/", "~")) else source
    parts = [short]
    if model.get("num_layers"):
        parts.append(f"first {model['num_layers']} layers")
    parts.append(f"max length {model.get('max_seq_length', '?')}")
    return ", ".join(parts)


def load_entry(run_dir: Path | str, label: str | None = None, settings: str | None = None) -> RunEntry:
    """A finished run folder; CompareError-like ReportError (exit 2) when its report.json is missing or invalid."""
    run_dir = Path(run_dir)
    result = load_report(run_dir)
    recipe = _read_yaml(run_dir / "recipe.resolved.yaml")
    return RunEntry(
        label=label or f"{result.recipe_name}/{result.run_id}",
        run_dir=run_dir,
        result=result,
        recipe=recipe,
        conditions=_read_json(run_dir / CONDITIONS_FILE),
        settings=settings if settings is not None else default_settings(recipe),
    )


def load_entries(run_dirs: Sequence[Path | str]) -> list[RunEntry]:
    entries = [load_entry(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for e in entries:  # the same run twice, or two copies of one run folder: keep labels apart
        seen[e.label] = seen.get(e.label, 0) + 1
        if seen[e.label] > 1:
            e.label = f"{e.label} ({seen[e.label]})"
    return entries


def accuracy_margin(entries: Sequence[RunEntry], override: float | None = None) -> tuple[float, str]:
    """The recommendation's margin (a fraction) and where it came from."""
    if override is not None:
        return override, "given on the command line"
    for e in entries:
        value = (e.recipe.get("selection") or {}).get("accuracy_margin")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), f"selection.accuracy_margin of {e.label}'s recipe"
    return DEFAULT_ACCURACY_MARGIN, "the default (the recipes set no selection.accuracy_margin)"


# ---------------------------------------------------------------------------------------------
# the comparison as data (sweep.json / compare.json)


def _key(shape: tuple[int, int]) -> str:
    return f"b{shape[0]}xs{shape[1]}"


def _shapes_of(e: RunEntry) -> list[tuple[int, int]]:
    return sorted({(s.batch_size, s.seq_length) for v in e.result.variants if v.status == "ok" for s in v.latency})


def decision_shapes(entries: Sequence[RunEntry]) -> dict[str, tuple[int, int] | None]:
    """Per run, the shape its points are compared at: the largest batch every timed run measured, at that run's
    longest measured sequence (runs at different max lengths are compared at the length each would serve)."""
    timed = [e for e in entries if _shapes_of(e)]
    common = set.intersection(*({b for b, _ in _shapes_of(e)} for e in timed)) if timed else set()
    out: dict[str, tuple[int, int] | None] = {}
    for e in entries:
        shapes = _shapes_of(e)
        batches = [b for b, _ in shapes if b in common] or [b for b, _ in shapes]
        if not batches:
            out[e.label] = None
            continue
        b = max(batches)
        out[e.label] = (b, max(s for bb, s in shapes if bb == b))
    return out


def _latency_of(v: VariantResult, shape: tuple[int, int] | None) -> LatencyStats | None:
    return v.latency_at(*shape) if shape is not None else None


def _variant_data(v: VariantResult, role: str, ref: VariantResult | None, primary: str) -> dict[str, Any]:
    paired = paired_of(v) if v is not ref else None
    return {
        "variant": v.name,
        "role": role,
        "precision": v.precision,
        "status": v.status,
        "error": v.error,
        primary: metric_of(v, primary),
        f"{primary}_interval": list(ci) if (ci := metric_interval(v, primary)) else None,
        "delta_vs_float": delta_of(v, ref, primary),
        "delta_interval": [paired["delta_low"], paired["delta_high"]] if paired else None,
        "latency": {
            s.key: {"batch_size": s.batch_size, "seq_length": s.seq_length, "p50_ms": s.p50_ms, "p50_low_ms": s.p50_low_ms,
                    "p50_high_ms": s.p50_high_ms, "iterations": s.iterations}
            for s in v.latency
        },
        "speedup_vs_float": dict(v.speedup_vs_float),
        "speedup_interval_vs_float": {k: list(x) for k, x in v.speedup_interval_vs_float.items()},
        "size_bytes": v.size_bytes,
    }


def _point(e: RunEntry, v: VariantResult, role: str, shape: tuple[int, int] | None) -> dict[str, Any] | None:
    st = _latency_of(v, shape)
    acc = metric_of(v, e.result.primary_metric)
    if st is None or acc is None:
        return None
    ci = metric_interval(v, e.result.primary_metric)
    return {
        "run": e.label, "variant": v.name, "role": role, "accuracy": acc, "accuracy_interval": list(ci) if ci else None,
        "p50_ms": st.p50_ms, "p50_low_ms": st.p50_low_ms, "p50_high_ms": st.p50_high_ms, "shape": _key((st.batch_size, st.seq_length)),
    }


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points no other point beats on both accuracy (higher) and p50 (lower), fastest first (point estimates)."""
    front = [
        p for p in points
        if not any(
            q is not p and q["accuracy"] >= p["accuracy"] and q["p50_ms"] <= p["p50_ms"]
            and (q["accuracy"] > p["accuracy"] or q["p50_ms"] < p["p50_ms"])
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (p["p50_ms"], -p["accuracy"]))


def _hardware_text(hw: Mapping[str, Any]) -> str:
    return f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores" + (f", {hw['gpu']}" if hw.get("gpu") else "")


def _conditions(e: RunEntry) -> dict[str, Any]:
    bench = {k: x for k, x in (e.recipe.get("benchmark") or {}).items() if k not in _SHAPE_KEYS}
    return {
        "hardware": e.result.hardware,
        "versions": e.result.versions,
        "benchmark settings": {"benchmark": bench, "engine": e.recipe.get("engine") or {}} if e.recipe else None,
    }


def comparability(entries: Sequence[RunEntry]) -> dict[str, Any]:
    """Which runs' latencies (and accuracies) may be compared with each other, and why not where not."""
    timed = [e for e in entries if _shapes_of(e)]
    groups: dict[str, list[RunEntry]] = {}
    for e in timed:
        groups.setdefault(hash_json(_conditions(e)), []).append(e)
    ordered = sorted(groups.values(), key=lambda g: -len(g))
    main = ordered[0] if ordered else []
    latency_groups = []
    for g in ordered:
        differs = [] if g is main else [k for k, x in _conditions(g[0]).items() if x != _conditions(main[0]).get(k)]
        if g is not main and any(x is None for x in (_conditions(g[0])["benchmark settings"], _conditions(main[0])["benchmark settings"])):
            differs = sorted({*differs, "benchmark settings (not recorded)"})
        latency_groups.append({
            "runs": [e.label for e in g], "hardware": _hardware_text(g[0].result.hardware),
            "versions": g[0].result.versions, "differs_from_first_group": differs,
        })
    parallel = [e.label for e in timed if e.timing == "in parallel"]
    unknown = [e.label for e in timed if e.timing == "not recorded"]
    comparable = len(ordered) <= 1 and not parallel and all(_conditions(e)["benchmark settings"] is not None for e in timed)
    if not timed:
        statement = "No run measured latency."
    elif comparable:
        statement = (
            f"The latencies of all {len(timed)} timed runs were measured on the same machine ({_hardware_text(timed[0].result.hardware)}), "
            "with the same package versions and the same benchmark and engine settings"
            + (", one run at a time" if not unknown else f"; {', '.join(unknown)} did not record whether other work shared the machine")
            + ". They were still timed at different moments, so background load may differ between runs; "
            "`quantize compare --retime RUN_DIR...` times them again in one interleaved loop."
        )
    else:
        why = []
        if len(ordered) > 1:
            why.append(f"they fall into {len(ordered)} groups of machine, versions and benchmark settings (below)")
        if parallel:
            why.append(f"{', '.join(parallel)} were timed while other runs shared the machine (sweep --jobs > 1)")
        statement = (
            "Latencies are **not comparable across all runs**: " + "; ".join(why) + ". Compare p50s only within a group "
            "of runs timed alone, or re-time the runs in one loop with `quantize compare --retime RUN_DIR...`."
        )
    data_groups: dict[str, list[str]] = {}
    for e in entries:
        key = hash_json({k: e.result.data.get(k) for k in ("fingerprint", "sizes", "label_names")} | {"task": e.result.task, "metric": e.result.primary_metric})
        data_groups.setdefault(key, []).append(e.label)
    acc_comparable = len(data_groups) <= 1
    acc_statement = (
        "Every run was scored on the same evaluation data (same data fingerprint, split sizes, labels and metric), so accuracies compare directly."
        if acc_comparable
        else f"Accuracies come from {len(data_groups)} different evaluation sets ("
        + "; ".join(", ".join(g) for g in data_groups.values()) + "): compare them only within a set."
    )
    return {
        "latency": {"comparable": comparable, "groups": latency_groups, "parallel": parallel, "not_recorded": unknown, "statement": statement},
        "accuracy": {"comparable": acc_comparable, "groups": list(data_groups.values()), "statement": acc_statement},
    }


RECOMMENDATION_RULE = (
    "the fastest run (p50 of its selected variant at its comparison shape) whose selected variant's {metric} is within "
    "{margin:.2f} points of the best float {metric} of all runs"
)


def recommend(entries: Sequence[RunEntry], shapes: Mapping[str, tuple[int, int] | None], margin: float, margin_source: str) -> dict[str, Any]:
    metric = entries[0].result.primary_metric if entries else "accuracy"
    rule = RECOMMENDATION_RULE.format(metric=metric, margin=100 * margin)
    floats = [(e, acc) for e in entries if e.float_variant is not None and (acc := metric_of(e.float_variant, metric)) is not None]
    out: dict[str, Any] = {"rule": rule, "margin": margin, "margin_source": margin_source, "recommended": None}
    if not floats:
        out["reason"] = "no run has a scored float variant"
        return out
    best_e, best = max(floats, key=lambda x: x[1])
    threshold = best - margin
    out.update(best_float={"run": best_e.label, metric: best}, threshold=threshold)
    candidates: list[dict[str, Any]] = []
    for e in entries:
        sel = e.selected
        acc = metric_of(sel, metric) if sel is not None else None
        if sel is None or acc is None or acc < threshold:
            continue
        st = _latency_of(sel, shapes.get(e.label))
        candidates.append({"run": e.label, "variant": sel.name, metric: acc, "p50_ms": st.p50_ms if st else None,
                           "shape": _key((st.batch_size, st.seq_length)) if st else None})
    out["candidates"] = candidates
    if not candidates:
        chosen = max(((e, metric_of(e.selected, metric)) for e in entries if e.selected is not None), key=lambda x: x[1] or -1.0, default=None)
        out["reason"] = f"no run's selected variant is within {100 * margin:.2f} points of the best float {metric} ({100 * best:.2f} %, {best_e.label})"
        if chosen is not None and chosen[1] is not None:
            out["most_accurate_selected"] = {"run": chosen[0].label, "variant": chosen[0].selected.name if chosen[0].selected else None, metric: chosen[1]}
        return out
    timed = [c for c in candidates if c["p50_ms"] is not None]
    if timed:
        pick = min(timed, key=lambda c: (c["p50_ms"], -c[metric]))
        out["reason"] = (
            f"{len(candidates)} run(s) have a selected variant within the margin ({metric} >= {100 * threshold:.2f} %); "
            f"{pick['run']} ({pick['variant']}) is the fastest of them at {pick['p50_ms']:.2f} ms ({_shape_text(pick['shape'])})"
        )
    else:
        pick = max(candidates, key=lambda c: c[metric])
        out["reason"] = "no candidate has a measured latency: the most accurate candidate is recommended"
    out["recommended"] = pick
    return out


def build_comparison(entries: Sequence[RunEntry], margin: float | None = None) -> dict[str, Any]:
    """The whole comparison as plain data: per run float / selected / reference rows, the cross-run points,
    the Pareto front, the recommendation and which runs are comparable."""
    shapes = decision_shapes(entries)
    runs = []
    points: list[dict[str, Any]] = []
    for e in entries:
        ref = float_row(e.result)
        primary = e.result.primary_metric
        rows = []
        if ref is not None:
            rows.append(_variant_data(ref, "float", ref, primary))
        sel = e.result.variant(e.result.best_variant) if e.result.best_variant else None
        if sel is not None and sel is not ref:
            rows.append(_variant_data(sel, "selected", ref, primary))
        rows += [_variant_data(v, "reference", ref, primary) for v in e.references]
        runs.append({
            "label": e.label, "run_dir": str(e.run_dir), "settings": e.settings, "recipe_name": e.result.recipe_name,
            "run_id": e.result.run_id, "recipe_hash": e.result.recipe_hash, "primary_metric": primary,
            "best_variant": e.result.best_variant, "comparison_shape": _key(s) if (s := shapes[e.label]) else None,
            "timing": e.timing, "rows": rows,
        })
        for v, role in ((e.float_variant, "float"), (e.selected, "selected")):
            p = _point(e, v, role, shapes[e.label]) if v is not None else None
            if p is not None:
                points.append(p)
    value, source = accuracy_margin(entries, margin)
    return {
        "runs": runs,
        "points": points,
        "pareto": [dict(p) for p in pareto_front(points)],
        "recommendation": recommend(entries, shapes, value, source),
        "comparability": comparability(entries),
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _shape_text(key: str | None) -> str:
    if not key:
        return "no measured shape"
    b, _, s = key[1:].partition("xs")
    return f"b{b}×{s}"


def _summary_rows(entries: Sequence[RunEntry], shapes: Mapping[str, tuple[int, int] | None]) -> list[list[str]]:
    rows = []
    for e in entries:
        ref, sel = float_row(e.result), e.selected
        primary = e.result.primary_metric
        shape = shapes.get(e.label)
        key = _key(shape) if shape else None
        st_f = _latency_of(ref, shape) if ref is not None else None
        st_s = _latency_of(sel, shape) if sel is not None else None
        rows.append([
            e.label,
            e.settings or DASH,
            pct_ci(metric_of(ref, primary), metric_interval(ref, primary)) if ref is not None else DASH,
            sel.name if sel is not None else "none selected",
            pct_ci(metric_of(sel, primary), metric_interval(sel, primary)) if sel is not None else DASH,
            points_ci(delta_of(sel, ref, primary), paired_of(sel)) if sel is not None and sel is not ref else DASH,
            _shape_text(key),
            ms_ci(st_f) if st_f else DASH,
            ms_ci(st_s) if st_s else DASH,
            speedup_ci(sel.speedup_vs_float.get(key), sel.speedup_interval_vs_float.get(key)) if sel is not None and key else DASH,
            f"{mb(sel.size_bytes)} / {mb(ref.size_bytes)}" if sel is not None and ref is not None else DASH,
        ])
    return rows


def _run_table(e: RunEntry) -> list[str]:
    ref = float_row(e.result)
    primary = e.result.primary_metric
    shapes = _shapes_of(e)
    header = ["Variant", "Role", f"{primary.replace('_', ' ')} (%)", "Δ vs float (pts)"]
    for b, s in shapes:
        header += [f"p50 b{b}×{s} (ms)", f"speed-up b{b}×{s}"]
    header.append("Size (MB)")
    rows = []
    sel = e.result.variant(e.result.best_variant) if e.result.best_variant else None
    chosen = [(ref, "float"), (sel, "selected"), *((v, "reference") for v in e.references)]
    for v, role in chosen:
        if v is None or (role == "selected" and v is ref):
            continue
        if v.status != "ok":
            rows.append([v.name, role, "failed", DASH, *([DASH, DASH] * len(shapes)), DASH])
            continue
        row = [v.name, role, pct_ci(metric_of(v, primary), metric_interval(v, primary)),
               DASH if v is ref else points_ci(delta_of(v, ref, primary), paired_of(v) if primary == "accuracy" else None)]
        for b, s in shapes:
            st = v.latency_at(b, s)
            key = _key((b, s))
            row += [ms_ci(st) if st else DASH, "1.00×" if v is ref else speedup_ci(v.speedup_vs_float.get(key), v.speedup_interval_vs_float.get(key))]
        row.append(mb(v.size_bytes))
        rows.append(row)
    return markdown_table(header, rows, [False, False] + [True] * (len(header) - 2))


def recommendation_lines(rec: Mapping[str, Any], metric: str = "accuracy") -> list[str]:
    lines = [f"Rule: {rec['rule']} (margin {100 * rec['margin']:.2f} points: {rec['margin_source']}).", ""]
    best = rec.get("best_float")
    if best:
        lines.append(f"- Best float {metric}: {100 * best[metric]:.2f} % ({best['run']}); threshold {100 * rec['threshold']:.2f} %.")
    cands = rec.get("candidates") or []
    if best is not None:
        lines.append(
            "- Within the margin: "
            + (", ".join(f"{c['run']} ({c['variant']}, {100 * c[metric]:.2f} %, "
                         + (f"{c['p50_ms']:.2f} ms at {_shape_text(c['shape'])})" if c["p50_ms"] is not None else "no latency)")
                         for c in cands) or "none")
            + "."
        )
    pick = rec.get("recommended")
    if pick is not None:
        lines += ["", f"**Recommended: {pick['run']}, variant {pick['variant']}** ({100 * pick[metric]:.2f} %"
                  + (f", {pick['p50_ms']:.2f} ms at {_shape_text(pick['shape'])})." if pick.get("p50_ms") is not None else ").")]
    else:
        lines += ["", f"**No recommendation**: {rec.get('reason', '')}."]
        alt = rec.get("most_accurate_selected")
        if alt:
            lines.append(f"The most accurate selected variant is {alt['run']} ({alt['variant']}, {100 * alt[metric]:.2f} %).")
    if pick is not None and rec.get("reason"):
        lines += ["", f"Why: {rec['reason']}."]
    return [*lines, ""]


def render_comparison(
    entries: Sequence[RunEntry], comparison: Mapping[str, Any], *, plot_relpath: str | None = CROSS_PLOT_RELPATH
) -> list[str]:
    """The comparison sections (Markdown lines) shared by sweep.md and `quantize compare`."""
    shapes = decision_shapes(entries)
    metric = entries[0].result.primary_metric if entries else "accuracy"
    lines = ["## Recommendation", "", *recommendation_lines(comparison["recommendation"], metric)]
    if not comparison["comparability"]["latency"]["comparable"] and comparison["recommendation"].get("recommended"):
        lines += ["The latencies behind it are not all comparable (see \"Comparable?\"): treat it as provisional until the runs "
                  "are re-timed in one loop (`quantize compare --retime`).", ""]
    lines += [
        "## Runs",
        "",
        f"Float and the variant each run selected, at each run's comparison shape (the largest batch every run measured, at the run's "
        f"longest sequence). {metric.replace('_', ' ').capitalize()} with its interval; Δ vs the run's own float with its paired interval; "
        "p50 with its bootstrap interval; speed-up = float p50 / selected p50 from the run's own interleaved benchmark.",
        "",
        *markdown_table(
            ["Run", "Settings", f"Float {metric} (%)", "Selected", f"Selected {metric} (%)", "Δ vs float (pts)", "Shape",
             "Float p50 (ms)", "Selected p50 (ms)", "Speed-up", "Size MB (selected / float)"],
            _summary_rows(entries, shapes),
            [False, False, True, False, True, True, False, True, True, True, True],
        ),
        "",
        "## Accuracy vs latency across runs",
        "",
    ]
    if plot_relpath:
        lines += [f"![accuracy vs latency across runs]({plot_relpath})", ""]
    front = comparison["pareto"]
    lines += [
        "Pareto front across runs (no other point is both more accurate and faster; point estimates, every run at its own shape): "
        + (", ".join(f"{p['run']} {p['variant']} ({100 * p['accuracy']:.2f} %, {p['p50_ms']:.2f} ms)" for p in front) or "none (no point has both)")
        + ".",
        "",
        "## Comparable?",
        "",
        f"- Latency: {comparison['comparability']['latency']['statement']}",
        f"- Accuracy: {comparison['comparability']['accuracy']['statement']}",
        "",
    ]
    groups = comparison["comparability"]["latency"]["groups"]
    if len(groups) > 1 or comparison["comparability"]["latency"]["parallel"]:
        timing = {e.label: e.timing for e in entries}
        rows = [[str(i + 1), ", ".join(g["runs"]), g["hardware"], ", ".join(f"{k} {x}" for k, x in g["versions"].items() if k in ("quant_workbench", "onnxruntime", "torch")),
                 ", ".join(sorted({timing[r] for r in g["runs"]})), ", ".join(g["differs_from_first_group"]) or "—"] for i, g in enumerate(groups)]
        lines += [*markdown_table(["Group", "Runs", "Machine", "Versions", "Timed", "Differs from group 1 in"], rows), ""]
    lines += ["## Per run", ""]
    for e in entries:
        lines += [f"### {e.label}", "", f"`{e.run_dir}` · {e.settings or DASH} · selected: {e.result.best_variant or 'none'} · "
                  f"timed: {e.timing} · machine: {_hardware_text(e.result.hardware)}", ""]
        lines += [*_run_table(e), ""]
        failed = [v for v in e.result.variants if v.status != "ok"]
        if failed:
            lines += ["Failed variants: " + ", ".join(f"{v.name} ({(v.error or 'failed').splitlines()[0][:160]})" for v in failed), ""]
    return lines


def render_compare_markdown(entries: Sequence[RunEntry], comparison: Mapping[str, Any], plot_relpath: str | None = CROSS_PLOT_RELPATH) -> str:
    lines = ["# Comparison of finished runs", "", f"{len(entries)} runs, from their report.json files.", ""]
    lines += render_comparison(entries, comparison, plot_relpath=plot_relpath)
    return "\n".join(lines).rstrip("\n") + "\n"


def failure_lines(failures: Sequence[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for label, error in failures:
        lines += [f"- **{label}**:", "", *("  " + x for x in fenced(error or "(no error message recorded)")), ""]
    return lines


# ---------------------------------------------------------------------------------------------
# the cross-run plot


def cross_run_figure(comparison: Mapping[str, Any], title: str) -> Any:
    """Every run's float (square) and selected (circle) point with interval bars on both axes, a line from each
    run's float to its selected variant, the Pareto front as a step line, the recommendation ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

    fig = Figure(figsize=(9.0, 5.8), dpi=120)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = comparison["points"]
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("p50 latency (ms) at each run's comparison shape, lower is better; bars: interval")
    ax.set_ylabel("accuracy (%), higher is better; bars: interval")
    ax.grid(True, alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no run has both an accuracy and a latency", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return fig
    runs = list(dict.fromkeys(p["run"] for p in points))
    colour = {r: f"C{i % 10}" for i, r in enumerate(runs)}
    rec = comparison["recommendation"].get("recommended") or {}
    for r in runs:
        mine = {p["role"]: p for p in points if p["run"] == r}
        if "float" in mine and "selected" in mine:
            ax.plot([mine["float"]["p50_ms"], mine["selected"]["p50_ms"]], [100 * mine["float"]["accuracy"], 100 * mine["selected"]["accuracy"]],
                    color=colour[r], linewidth=0.8, alpha=0.5, zorder=1)
    bars = []
    for p in points:
        y = 100.0 * p["accuracy"]
        ci = p["accuracy_interval"]
        yerr = [[y - 100.0 * ci[0]], [100.0 * ci[1] - y]] if ci else None
        xerr = [[p["p50_ms"] - p["p50_low_ms"]], [p["p50_high_ms"] - p["p50_ms"]]] if p["p50_low_ms"] is not None and p["p50_high_ms"] is not None else None
        bars.append(ax.errorbar([p["p50_ms"]], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour[p["run"]], elinewidth=1, capsize=3, alpha=0.6, zorder=2))
        ax.scatter([p["p50_ms"]], [y], marker="s" if p["role"] == "float" else "o", color=colour[p["run"]], s=60, zorder=3,
                   edgecolors="0.2" if p["role"] == "float" else "none", label=p["run"] if p["role"] == "selected" else None)
        if rec and p["run"] == rec.get("run") and p["role"] == "selected":
            ax.scatter([p["p50_ms"]], [y], s=320, facecolors="none", edgecolors="C3", linewidths=2, zorder=4, label="recommended")
    front = comparison["pareto"]
    if len(front) > 1:
        xs, ys = [front[0]["p50_ms"]], [100 * front[0]["accuracy"]]
        for p in front[1:]:
            xs += [p["p50_ms"], p["p50_ms"]]
            ys += [ys[-1], 100 * p["accuracy"]]
        ax.plot(xs, ys, color="0.4", linestyle=":", linewidth=1.2, zorder=1, label="Pareto front")
    highs = [p["p50_high_ms"] if p["p50_high_ms"] is not None else p["p50_ms"] for p in points]
    ax.set_xlim(0, max(highs) * 1.45)
    ys_all = [100 * p["accuracy"] for p in points] + [100 * b for p in points for b in (p["accuracy_interval"] or [])]
    low, high = min(ys_all), max(ys_all)
    pad = max(high - low, 0.5) * 0.35
    ax.set_ylim(low - pad, high + pad)
    ax.scatter([], [], marker="s", color="0.7", edgecolors="0.2", label="float (square)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    fig.tight_layout()
    renderer = canvas.get_renderer()
    to_px = ax.transData.transform
    obstacles = []
    for p in points:
        px, py = to_px((p["p50_ms"], 100 * p["accuracy"]))
        r = (60.0 ** 0.5) / 2.0 * fig.dpi / 72.0 + 1.0
        obstacles.append(Bbox([[px - r, py - r], [px + r, py + r]]))
    soft = [Bbox(line.get_window_extent(renderer).get_points()) for bar in bars for line in bar.lines[2]]
    order = sorted(points, key=lambda p: (-p["accuracy"], p["p50_ms"], p["run"]))
    labels = [(f"{p['run']}: {p['variant']}\n{100 * p['accuracy']:.2f} %, {p['p50_ms']:.2f} ms", p["p50_ms"], 100 * p["accuracy"],
               bool(rec) and p["run"] == rec.get("run") and p["role"] == "selected") for p in order]
    place_labels(ax, renderer, labels, obstacles, soft)
    return fig


def plot_cross_run(comparison: Mapping[str, Any], path: Path, title: str) -> Path:
    fig = cross_run_figure(comparison, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: same input, same bytes
    return path


# ---------------------------------------------------------------------------------------------
# re-timing the runs' graphs in one interleaved loop


class TimedRunner(Protocol):
    input_names: list[str]

    def __call__(self, feed: dict[str, np.ndarray]) -> object: ...


OpenRunner = Callable[[Path, Any, int], TimedRunner]  # (engine graph, EngineSpec, threads) -> runner


class _SessionRunner:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self._outputs = [session.get_outputs()[0].name]

    def __call__(self, feed: dict[str, np.ndarray]) -> object:
        return self.session.run(self._outputs, {k: v for k, v in feed.items() if k in self.input_names})


def ort_runner(path: Path, spec: Any, threads: int) -> TimedRunner:
    """An ONNX Runtime session as the run built it (runtime/onnxruntime.py options), with idle intra-op threads
    not spinning: a session that just ran would otherwise keep the cores busy while the next model is timed."""
    import onnxruntime as ort

    from quant_workbench.runtime.onnxruntime import disabled_optimizers, session_options, session_providers

    so = session_options(spec, threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=session_providers(spec), disabled_optimizers=disabled_optimizers(spec))
    return _SessionRunner(session)


@dataclass
class RetimeTarget:
    run: str
    variant: str
    path: Path
    engine: Any  # EngineSpec
    seq_length: int
    vocab_size: int
    report_latency: dict[int, float] = field(default_factory=dict)  # batch -> p50 (ms) in the run's own report

    @property
    def name(self) -> str:
        return f"{self.run} · {self.variant}"


def engine_graph_path(run_dir: Path, v: VariantResult) -> Path:
    """The file a variant was scored and timed with in its run (export/graphs.py), checked to lie in the run folder."""
    graph = v.fidelity.get("engine_graph") or {}
    rel = graph.get("path") if str(graph.get("path", "")).startswith("models/") else None
    rel = rel or v.artifacts.get("engine_onnx") or v.artifacts.get("reference_onnx") or v.artifacts.get("onnx")
    if graph.get("graph") == "qdq":  # the run fell back to the Q/DQ export for this variant
        rel = v.artifacts.get("onnx")
    if not rel:
        raise CompareError(f"{run_dir}: variant {v.name} names no ONNX artifact in report.json.", "re-run the recipe that wrote this folder")
    path = (run_dir / str(rel)).resolve()
    if run_dir.resolve() not in path.parents:
        raise CompareError(f"{run_dir}: variant {v.name}'s artifact '{rel}' lies outside the run folder.", "restore the run's report.json")
    if not path.is_file():
        raise CompareError(f"{run_dir}: variant {v.name}'s engine graph {path} is missing.", "re-run the recipe that wrote this folder (it rebuilds missing artifacts)")
    return path


def _vocab_size(recipe: Mapping[str, Any]) -> int:
    """The model's vocabulary (ids of the synthetic feed must exist); 1000 when unknown: ids below 1000 exist in
    every real vocabulary, and a dense encoder's time does not depend on which tokens it reads."""
    from quant_workbench.config.recipe import resolve_location

    source = str((recipe.get("model") or {}).get("source", ""))
    try:
        config = json.loads((Path(resolve_location(source)) / "config.json").read_text(encoding="utf-8")) if source else {}
        return int(config.get("vocab_size", 1000))
    except (OSError, ValueError, WorkbenchError):
        return 1000


def retime_targets(entries: Sequence[RunEntry], seq_length: int | None = None) -> list[RetimeTarget]:
    from pydantic import ValidationError

    from quant_workbench.config.recipe import EngineSpec

    targets = []
    for e in entries:
        try:
            engine = EngineSpec.model_validate(e.recipe.get("engine") or {})
        except ValidationError:
            engine = EngineSpec()
        if engine.runtime != "onnxruntime":
            raise CompareError(
                f"run {e.label} ran on engine.runtime '{engine.runtime}'; --retime times ONNX Runtime graphs only.",
                "leave that run out of --retime (compare it without --retime), or re-time it with its own engine's tools",
            )
        shapes = _shapes_of(e)
        seq = seq_length or (max(s for _, s in shapes) if shapes else int((e.recipe.get("model") or {}).get("max_seq_length", 128)))
        vocab = _vocab_size(e.recipe)
        chosen = {v.name: v for v in (e.float_variant, e.selected) if v is not None}
        if not chosen:
            raise CompareError(f"run {e.label} has neither a float nor a selected variant to time.", "leave it out of --retime")
        for v in chosen.values():
            targets.append(RetimeTarget(
                run=e.label, variant=v.name, path=engine_graph_path(e.run_dir, v), engine=engine, seq_length=seq, vocab_size=vocab,
                report_latency={s.batch_size: s.p50_ms for s in v.latency if s.seq_length == seq},
            ))
    return targets


def interleaved_rounds(
    calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int, rng: np.random.Generator,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Time every call once per round, in a fresh random order each round; returns seconds per call name (round
    order) and the order of every round. Warm-up rounds (also shuffled) are not recorded."""
    names = list(calls)
    for _ in range(warmup):
        for i in rng.permutation(len(names)):
            calls[names[i]]()
    times: dict[str, list[float]] = {n: [] for n in names}
    orders: list[list[str]] = []
    gc.collect()  # a collector pause inside a timed call would be charged to whichever model ran then
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            order = [names[i] for i in rng.permutation(len(names))]
            for n in order:
                start = clock()
                calls[n]()
                times[n].append(clock() - start)
            orders.append(order)
    finally:
        if was_enabled:
            gc.enable()
    return times, orders


def retime(
    entries: Sequence[RunEntry],
    *,
    batch_sizes: Sequence[int] | None = None,
    seq_length: int | None = None,
    rounds: int = 20,
    warmup: int = 3,
    threads: int = 0,
    seed: int = 0,
    level: float = 0.05,
    open_runner: OpenRunner = ort_runner,
    clock: Callable[[], float] = time.perf_counter,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Re-time the float and selected engine graphs of every run in ONE interleaved loop per batch size (every
    model in this process, a fresh random order each round); medians with bootstrap intervals, speed-ups vs each
    run's own float and vs the first run's float with intervals from the paired rounds (stats.ratio_interval)."""
    from quant_workbench.measure.latency import make_feed
    from quant_workbench.measure.stats import median_interval, ratio_interval

    targets = retime_targets(entries, seq_length)
    batches = list(batch_sizes) if batch_sizes else sorted({b for e in entries for b, _ in _shapes_of(e)} or {1})
    runners = {t.name: open_runner(t.path, t.engine, threads) for t in targets}
    baseline = next((t.name for t in targets if t.variant == "float"), targets[0].name)
    own_float = {t.run: t.name for t in targets if t.variant == "float"}
    rng = np.random.default_rng(seed)
    out_shapes = []
    for b in batches:
        say(f"re-timing {len(targets)} graphs at batch {b}: {warmup} warm-up + {rounds} rounds, a fresh random order each round")
        feeds = {t.name: make_feed(b, t.seq_length, runners[t.name].input_names, t.vocab_size, seed=seed) for t in targets}
        calls: dict[str, Callable[[], object]] = {n: partial(runners[n], feeds[n]) for n in runners}
        seconds, orders = interleaved_rounds(calls, rounds, warmup, rng, clock)
        ms = {n: [1000.0 * x for x in xs] for n, xs in seconds.items()}
        rows = {}
        for t in targets:
            samples = ms[t.name]
            lo, hi = median_interval(samples, level)
            row: dict[str, Any] = {
                "run": t.run, "variant": t.variant, "seq_length": t.seq_length, "p50_ms": float(np.median(samples)),
                "p50_low_ms": lo, "p50_high_ms": hi, "report_p50_ms": t.report_latency.get(b), "samples_ms": samples,
            }
            own = own_float.get(t.run)
            if own is not None and own != t.name:
                r = ratio_interval(ms[own], samples, level)
                row["speedup_vs_own_float"] = [r.ratio, r.low, r.high]
            if t.name != baseline:
                r = ratio_interval(ms[baseline], samples, level)
                row["speedup_vs_baseline"] = [r.ratio, r.low, r.high]
            rows[t.name] = row
        out_shapes.append({"batch_size": b, "orders": orders, "runners": rows})
    from quant_workbench.core.machine import hardware

    return {
        "machine": hardware(), "rounds": rounds, "warmup": warmup, "threads": threads, "seed": seed, "level": level,
        "session_options": {"session.intra_op.allow_spinning": "0"}, "baseline": baseline, "shapes": out_shapes,
    }


def render_retime(data: Mapping[str, Any]) -> list[str]:
    conf = 100 * (1 - data["level"])
    lines = [
        "## Re-timed in one interleaved loop",
        "",
        f"Every graph below was timed in this one process, {data['rounds']} rounds after {data['warmup']} warm-up rounds, in a fresh "
        f"random order each round (seed {data['seed']}), ONNX Runtime sessions with idle threads not spinning "
        f"(`session.intra_op.allow_spinning = 0`), {data['threads'] or 'all'} intra-op threads. p50 with its {conf:g} % bootstrap "
        f"interval; speed-ups are ratios of medians with intervals from the paired rounds. Machine: {_hardware_text(data['machine'])}.",
        "",
    ]

    def ratio(x: Sequence[float] | None) -> str:
        return speedup_ci(x[0], x[1:]) if x else DASH

    for shape in data["shapes"]:
        lines += [f"### Batch {shape['batch_size']}", ""]
        rows = []
        for row in shape["runners"].values():
            p50 = f"{row['p50_ms']:.2f} ({row['p50_low_ms']:.2f}–{row['p50_high_ms']:.2f})"
            report = f"{row['report_p50_ms']:.2f}" if row.get("report_p50_ms") is not None else DASH
            rows.append([row["run"], row["variant"], str(row["seq_length"]), p50, report, ratio(row.get("speedup_vs_own_float")), ratio(row.get("speedup_vs_baseline"))])
        lines += [*markdown_table(["Run", "Variant", "Sequence", "p50 (ms)", "p50 in its report", "vs its float", f"vs {data['baseline']}"], rows,
                          [False, False, True, True, True, True, True]), ""]
    return lines
