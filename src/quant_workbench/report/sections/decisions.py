"""Report sections that show what decided the run's recommendation: the margin rule and its comparisons,
the evaluation's blocks and early stops (and which split made which decision), the benchmark's design
(random order, A/A control, stops), and the plot of paired Δ vs speed-up with the margins as bands.

Everything is rendered from report.json's content (RunResult), so a report re-rendered later (deploy)
shows the same decisions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quant_workbench.core.artifacts import atomic_path
from quant_workbench.core.results import RunResult, VariantResult
from quant_workbench.report.format import DASH, markdown_table, points

PLOT_RELPATH = "plots/delta_vs_speedup.png"


def _interval_pts(d: Mapping[str, Any]) -> str:
    return f"{points(d.get('delta'))} ({points(d.get('low'))} to {points(d.get('high'))})"


def _p(x: float | None) -> str:
    if x is None:
        return DASH
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


# ---------------------------------------------------------------------------------------------
# the selection


def selection_lines(result: RunResult) -> list[str]:
    """The margin rule's record (schema v4 `selection`): outcome, margins, every comparison, the reason."""
    sel = result.selection
    comparisons = sel.get("comparisons") or {}
    lines = [f"**Decision: {sel.get('outcome', DASH)}**" + (f" (split: {sel.get('split')})" if sel.get("split") else "") + ".", ""]
    if sel.get("warning"):
        lines += [f"> **Warning:** {sel['warning']}", ""]
    lines += [f"Rule, as the code runs it: {sel.get('rule') or result.selection_rule or DASH}.", ""]
    margin = sel.get("accuracy_margin")
    k = comparisons.get("accuracy_family", len(comparisons.get("accuracy") or []))
    speed = comparisons.get("speed") or []
    lines += [
        f"- Accuracy margin: {100 * margin:.2f} pt ({sel.get('margin_source', DASH)}); speed margin: ±{100 * sel.get('speed_margin', 0):g} %; "
        f"baseline: {sel.get('baseline', 'float')}." if margin is not None else "- Margins: not recorded.",
        f"- Comparisons: {k} non-inferiority test(s) vs {sel.get('baseline', 'float')}, one per candidate ({comparisons.get('adjustment', 'Holm')}); "
        f"{len(speed)} speed comparison(s) at {sel.get('shape') or 'no measured shape'}. Intervals: {comparisons.get('interval', DASH)}.",
        f"- Acceptable: {', '.join(sel.get('acceptable') or []) or DASH}; undetermined: {', '.join(sel.get('undetermined') or []) or DASH}; "
        f"inferior: {', '.join(sel.get('inferior') or []) or DASH}.",
        f"- As fast as the fastest acceptable ({sel.get('fastest') or DASH}): {', '.join(sel.get('speed_group') or []) or DASH}.",
    ]
    if sel.get("speed_baseline"):
        floats = sel.get("float_baselines") or []
        others = [d for d in sel.get("float_accuracy") or []]
        tested = "; ".join(f"{d['name']} {d['status']} (Δ {100 * d['delta']:+.2f} pt, {100 * d['low']:+.2f} to {100 * d['high']:+.2f})" for d in others)
        lines.append(
            f"- Speed baseline: **{sel['speed_baseline']}**, the fastest float row at {sel.get('shape')} among those within the accuracy "
            f"margin of {sel.get('baseline', 'float')} ({', '.join(floats) or DASH})" + (f"; float rows tested: {tested}" if tested else "") + "."
        )
    if sel.get("needed_evaluation_size"):
        lines.append(f"- Evaluation size that would decide: about {sel['needed_evaluation_size']:,} examples.")
    lines += [f"- Why: {sel.get('reason') or DASH}", ""]
    rows = []
    for d in comparisons.get("accuracy") or []:
        stop = d.get("stopped")
        rows.append([
            d["name"], f"{d['n']:,}", _interval_pts(d), str(d.get("discordant", DASH)), _p(d.get("p_noninferiority")), _p(d.get("p_holm")),
            d["status"], f"stopped at look {stop['look']} ({stop['n']:,} examples)" if stop else "whole split",
        ])
    if rows:
        m = f"{100 * margin:.2f}" if margin is not None else "?"
        lines += markdown_table(["Candidate", "Examples", "Δ vs float (pts, interval)", "Discordant", f"p (Δ ≤ −{m} pt)", "Holm p", "Accuracy decision", "Evaluation"], rows) + [""]
    if speed:
        srows = [
            [s["name"], s["versus"], f"{s['ratio']:.3f}" + (f" ({s['low']:.3f}–{s['high']:.3f})" if s.get("low") is not None else ""), s["status"]]
            for s in speed
        ]
        lines += [f"Speed at {sel.get('shape')}: latency ratio (> 1: slower; median of per-round ratios, interval over rounds) against ±{100 * sel.get('speed_margin', 0):g} %:", ""]
        lines += markdown_table(["Variant", "vs", "Latency ratio", "Against the margin"], srows) + [""]
    return lines


# ---------------------------------------------------------------------------------------------
# the evaluation


def evaluation_section(result: RunResult) -> list[str]:
    ev = result.evaluation
    if not ev:
        return []
    lines = ["## Evaluation and the splits that decided", ""]
    for d in ev.get("decisions") or []:
        lines.append(f"- **{d['split']}** split ({d['n']:,} examples): {d['decision']}.")
    if ev.get("decisions"):
        lines.append("")
    looks, n = ev.get("looks", 1), ev.get("n", 0)
    lines += [f"Procedure: {ev.get('procedure', DASH)}.", ""]
    if looks > 1 and ev.get("boundaries"):
        blocks = ", ".join(f"{b:,}" for _, b in (ev.get("blocks") or [])[:-1])
        bounds = ", ".join(f"−{c:.3f}" for c in ev["boundaries"])
        lines += [f"Looks after {blocks} of {n:,} examples; inferiority boundaries (Tango statistic at −margin): {bounds}.", ""]
    batches = ev.get("batches") or {}
    if batches.get("padded_tokens"):
        pad = 100 * (1 - batches["real_tokens"] / batches["padded_tokens"])
        lines += [f"Batches of {batches.get('batch_size')} {batches.get('order', '')}: {batches['real_tokens']:,} real tokens, {pad:.1f} % padding.", ""]
    rows = []
    for name, v in (ev.get("variants") or {}).items():
        stop = v.get("stopped")
        if stop and stop.get("resolved", "inferior") == "non-inferior":
            why = f"non-inferior at look {stop['look']}: statistic {stop['statistic']:.2f} ≥ {stop['boundary']:.2f} (Δ {points(stop.get('delta'))} pt)"
        else:
            why = f"inferior at look {stop['look']}: statistic {stop['statistic']:.2f} ≤ {stop['boundary']:.2f} (Δ {points(stop.get('delta'))} pt)" if stop else DASH
        rows.append([name, f"{v['n']:,}", f"{v.get('seconds', 0):.1f}", why])
    if rows:
        lines += markdown_table(["Variant", "Examples scored", "Seconds", "Early stop"], rows) + [""]
    lines += [
        f"Texts through an engine: {ev.get('texts_scored', 0):,} (probe split included); saved by early stops: {ev.get('texts_saved', 0):,}; "
        f"evaluate stage {ev.get('seconds', 0):.1f} s.",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# the benchmark's design and its A/A control


def aa_lines(result: RunResult) -> list[str]:
    """One line per shape: the A/A control (the baseline timed twice, as two sessions)."""
    aa = (result.benchmark or {}).get("aa") or {}
    return [f"A/A control at {key}: {a['ratio']:.3f}× ({a['low']:.3f}–{a['high']:.3f})" for key, a in aa.items()]


def benchmark_lines(result: RunResult) -> list[str]:
    b = result.benchmark
    if not b:
        return []
    config = (b.get("sessions") or {}).get("session_config") or {}
    spin = ", ".join(f"`{k} = {v}`" for k, v in config.items()) or "not recorded"
    lines = [
        f"Design: every runner once per round, in a fresh random order each round (seed {b.get('seed')}; every round's order is in "
        f"report.json `benchmark.shapes.<shape>.orders`); ONNX Runtime sessions: {spin} (no idle thread spins into the next session); "
        f"speed-ups are medians of per-round ratios, intervals from a moving-block bootstrap over rounds (drift cancels within a round and "
        f"neighbouring rounds are resampled together).",
        "",
    ]
    aa = aa_lines(result)
    if aa:
        lines += [f"**{x}** — the {b.get('baseline', 'float')} graph in a second session, timed as if it were a variant: it must read 1.00×." for x in aa] + [""]
    for key, d in (b.get("shapes") or {}).items():
        first = " (the selection shape, timed first)" if d.get("selection_shape") else ""
        pending = f"; unresolved: {', '.join(d['pending'])}" if d.get("pending") else ""
        detail = f" ({d['detail']})" if d.get("detail") and d.get("stop") == "resolved" else ""
        lines.append(f"- {key}{first}: {d.get('rounds')} rounds in {d.get('seconds', 0):.1f} s, stop: {d.get('stop')}{detail}{pending}.")
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# the plot: paired Δ vs float against speed-up vs float, the margins as bands


def _delta(v: VariantResult) -> tuple[float, float | None, float | None] | None:
    cmp = v.intervals.get("vs_float") if isinstance(v.intervals, dict) else None
    if isinstance(cmp, Mapping) and "delta" in cmp:
        return 100 * cmp["delta"], 100 * cmp["delta_low"], 100 * cmp["delta_high"]
    return None


def _shape(result: RunResult) -> str | None:
    shape = result.selection.get("shape") if result.selection else None
    if shape:
        return str(shape)
    keys = sorted({(s.batch_size, s.seq_length) for v in result.variants for s in v.latency})
    return f"b{keys[-1][0]}xs{keys[-1][1]}" if keys else None


_LABEL_ALL = 8  # label every point up to this many; beyond, only what the decision rests on
_MARKERS = {"float32": ("s", "0.35"), "fp16": ("s", "0.35"), "bf16": ("s", "0.35"), "int8": ("o", "C0"), "fp8": ("D", "C2")}


def delta_vs_speedup_figure(result: RunResult) -> Any:
    """Paired Δ accuracy vs float (y, points) against speed-up vs the float baseline (x, log scale) at the
    selection shape, each with its interval; the accuracy margin and the speed margin around the fastest
    acceptable variant drawn as bands; the selected variant ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from quant_workbench.report.plot_labels import place_labels

    sel = result.selection or {}
    margin = 100 * float(sel.get("accuracy_margin") or 0.005)
    speed_margin = float(sel.get("speed_margin") or 0.03)
    baseline = str(sel.get("baseline") or "float")
    shape = _shape(result)
    fig = Figure(figsize=(10.0, 7.0), dpi=120)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points: list[tuple[VariantResult, float, float, list[list[float]] | None, list[list[float]] | None]] = []
    for v in result.variants:
        if v.status != "ok" or shape is None:
            continue
        if v.name == baseline:
            points.append((v, 1.0, 0.0, None, None))
            continue
        d, sp = _delta(v), v.speedup_vs_float.get(shape)
        if d is None or sp is None:
            continue
        ci = v.speedup_interval_vs_float.get(shape)
        xerr = [[sp - ci[0]], [ci[1] - sp]] if ci else None
        yerr = [[d[0] - d[1]], [d[2] - d[0]]] if d[1] is not None and d[2] is not None else None
        points.append((v, sp, d[0], xerr, yerr))
    ax.set_title(f"{result.recipe_name}: paired Δ accuracy vs speed-up over {baseline}" + (f" ({shape})" if shape else ""), fontsize=11)
    ax.set_xlabel(f"speed-up vs {baseline} (log scale; bars: interval over rounds)")
    ax.set_ylabel(f"Δ accuracy vs {baseline} (points; bars: paired interval)")
    ax.grid(True, alpha=0.3, which="both")
    if len(points) < 2:
        ax.text(0.5, 0.5, "no variant has both a paired Δ and a speed-up here", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return fig
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(0.5, 1.0, 1.5, 2.0, 3.0, 5.0)))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(x / 10 for x in range(1, 10))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    xs = [p[1] for p in points] + [p[1] + (p[3][1][0] if p[3] else 0) for p in points] + [p[1] - (p[3][0][0] if p[3] else 0) for p in points]
    ys = [p[2] for p in points] + [p[2] + (p[4][1][0] if p[4] else 0) for p in points] + [p[2] - (p[4][0][0] if p[4] else 0) for p in points] + [-margin, margin]
    lo_x, hi_x = min(x for x in xs if x > 0), max(xs)
    ax.set_xlim(lo_x / 1.25, hi_x * 1.45)
    pad = max(max(ys) - min(ys), 0.5) * 0.3
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.axhspan(-margin, ax.get_ylim()[1], color="C2", alpha=0.08, lw=0, label=f"Δ ≥ −{margin:.2f} pt (non-inferiority margin)")
    ax.axhline(-margin, color="C2", ls="--", lw=1)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.axvline(1.0, color="0.6", lw=0.8)
    fastest = next((p for p in points if p[0].name == sel.get("fastest")), None)
    if fastest is not None:
        ax.axvspan(fastest[1] / (1 + speed_margin), fastest[1] * (1 + speed_margin), color="C0", alpha=0.10, lw=0,
                   label=f"within ±{100 * speed_margin:g} % of the fastest acceptable ({fastest[0].name})")
    speed_base = next((p for p in points if p[0].name == sel.get("speed_baseline") and p[0].name != baseline), None)
    if speed_base is not None:
        ax.axvline(speed_base[1], color="0.3", ls=":", lw=1.2, label=f"speed baseline: {speed_base[0].name} (fastest float within the margin)")
    from quant_workbench.report.sections.engine import engine_label

    engines = sorted({engine_label(p[0]) for p in points if not p[0].reference})
    colors = {label: f"C{i}" for i, label in enumerate(engines)}
    seen: set[str] = set()
    obstacles = []
    for v, x, y, xerr, yerr in points:
        marker, _ = _MARKERS.get(v.precision, ("^", "C1"))
        engine = engine_label(v)
        kind = "reference" if v.reference else v.precision
        if v.reference:
            marker, color = "^", "0.55"
        else:
            color = colors.get(engine, "C0") if len(engines) > 1 else _MARKERS.get(v.precision, ("^", "C1"))[1]
        legend = f"{kind} · {engine}" if len(engines) > 1 and not v.reference and engine else kind
        if xerr or yerr:
            ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, elinewidth=1, capsize=3, alpha=0.6, zorder=2)
        ax.scatter([x], [y], marker=marker, color=color, s=60, zorder=3, label=None if legend in seen else legend)
        seen.add(legend)
        if v.name == result.best_variant:
            ax.scatter([x], [y], s=320, facecolors="none", edgecolors="C3", linewidths=2, zorder=4, label="selected")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), fontsize=8, ncol=2, borderaxespad=0.0)
    fig.tight_layout()
    renderer = canvas.get_renderer()
    from matplotlib.transforms import Bbox

    for v, x, y, _, _ in points:
        px, py = ax.transData.transform((x, y))
        r = ((320.0 if v.name == result.best_variant else 60.0) ** 0.5) / 2.0 * fig.dpi / 72.0 + 1.0
        obstacles.append(Bbox([[px - r, py - r], [px + r, py + r]]))
    order = sorted(points, key=lambda p: (-p[2], -p[1], p[0].name))
    if len(order) > _LABEL_ALL:
        # a crowded plot labels what the decision rests on: the selected row, the float baselines and the
        # Pareto front (no row both faster and more accurate); every row is in the Results table
        keep = {result.best_variant, baseline, sel.get("speed_baseline")}
        front = {v.name for v, x, y, _, _ in points if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for _, x2, y2, _, _ in points)}
        order = [p for p in order if p[0].name in keep | front]
        ax.set_title(ax.get_title() + "\nlabelled: the selected row, the float baselines and the Pareto front", fontsize=10)
    labels = [(f"{v.name}\n{y:+.2f} pt, {x:.2f}×", x, y, v.name == result.best_variant) for v, x, y, _, _ in order]
    place_labels(ax, renderer, labels, obstacles, [])
    return fig


def plot_delta_vs_speedup(result: RunResult, path: Path) -> Path:
    path = Path(path)
    fig = delta_vs_speedup_figure(result)
    with atomic_path(path) as tmp:
        # Without a Software entry the PNG carries no version string or timestamp: same input, same bytes.
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path
