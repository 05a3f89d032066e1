"""The report's Search section, rendered from the search summary that RunResult.search carries.

It lives with the report (not the search) so that a report rendered again from report.json alone
(`quantize deploy`, a Triton benchmark) keeps the section without importing the search.
"""

from __future__ import annotations

from typing import Any

from quant_workbench.config.search import scheme_label
from quant_workbench.report.format import ms, pct


def _rel(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}×"


def search_section(s: dict[str, Any]) -> str:
    lat = s["latency_shape"]
    lines = ["", "## Search", ""]
    split = s.get("split", "evaluation")
    where = (f"Trials were scored and chosen on the held-out **selection** split ({s.get('split_size', '?')} examples); the final numbers "
             "and the criterion's check below come from the evaluation split, which the search never saw. ") if split == "selection" else (
             "Trials were scored and chosen on the **evaluation** split itself (no selection split held out): the final numbers are "
             "from the split the search chose on. ")
    lines.append(where + f"Criterion: {s['criterion']} → accuracy ≥ {pct(s['threshold'], ' %')} (float {pct(s['float_accuracy'], ' %')} on the {split} split). "
                 f"Latency objective: p50 relative to float (timed interleaved in one loop, so machine-load drift cancels) "
                 f"at batch {lat['batch_size']} × seq {lat['seq_length']} on {s['engine']}.")
    lines.append(f"Calibration passes during the search: {s['calibration_passes']} (statistics from {s['calibration_source']}); "
                 f"{s['configs_evaluated']} configurations evaluated, {s['exports']} Q/DQ exports, median {s['median_trial_s']:.1f} s per configuration.")
    lines.append("")
    sel = s.get("selected")
    if sel:
        verdict = "meets the criterion" if s["selected_meets"] else f"**misses the criterion by {s['miss'] * 100:.2f} points** (best found)"
        lines.append(f"**Selected:** `{sel['label']}` — accuracy {pct(sel['accuracy'], ' %')}, p50 {ms(sel['p50_ms'], ' ms')} "
                     f"(float {ms(sel['float_p50_ms'], ' ms')}, {sel['speedup'] or 0:.2f}×), {verdict}; artifacts in `best/`.")
        if s.get("selected_meets_at_lower_bound") is not None:
            holds = "also holds" if s["selected_meets_at_lower_bound"] else "does **not** hold"
            # the final evaluation's float (the run's float variant) is what the paired interval is against
            final_float = s.get("final_float_accuracy", s["float_accuracy"])
            lines.append(f"At the lower bound of the paired {s['interval_confidence']:g} % interval on Δ vs float in the final evaluation "
                         f"(Δ {s['selected_delta_low'] * 100:+.2f} points, accuracy {pct(final_float + s['selected_delta_low'], ' %')}; "
                         f"criterion ≥ {pct(s.get('final_threshold', s['threshold']), ' %')}) the criterion {holds}.")
        lines.append(f"Float modules: {', '.join(sel['float_modules']) or 'none'}")
    lines.append("")
    cmp_rows = s.get("comparison", [])
    if cmp_rows:
        lines += ["| config | accuracy | Δ vs float | p50 (search shape) | speed-up vs float |", "|---|---:|---:|---:|---:|"]
        for r in cmp_rows:
            d = None if r["accuracy"] is None else (r["accuracy"] - s["float_accuracy"]) * 100
            sp = "—" if not r.get("speedup") else f"{r['speedup']:.2f}×"
            dd = "—" if d is None else f"{d:+.2f}"
            lines.append(f"| {r['name']} | {pct(r['accuracy'], ' %')} | {dd} | {ms(r['p50_ms'], ' ms')} | {sp} |")
        lines.append("")
    if s.get("sensitivity"):
        lines += ["### Sensitivity (most sensitive first)", "", "![sensitivity](plots/sensitivity.png)", "",
                  "| rank | group | accuracy, only this group INT8 | drop | accuracy, only this group float | gain vs all-INT8 | modules |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for i, r in enumerate(s["sensitivity"], 1):
            drop = r["drop_only_quantized"]
            gain = r["gain_only_float"]
            lines.append(f"| {i} | {r['name']} | {pct(r['accuracy_only_quantized'], ' %')} | {'—' if drop is None else f'{drop * 100:+.2f}'} | "
                         f"{pct(r['accuracy_only_float'], ' %')} | {'—' if gain is None else f'{gain * 100:+.2f}'} | {', '.join(f'`{m}`' for m in r['modules'])} |")
        lines.append("")
    fb = s.get("fallback")
    if fb:
        lines += ["### Automatic fallback", "", f"Result: float groups {fb['float_groups'] or 'none'} ({'meets' if fb['meets'] else 'does not meet'} the criterion).", "",
                  "| step | config | accuracy | p50 | vs float | meets |", "|---:|---|---:|---:|---:|---|"]
        for i, st in enumerate(fb["steps"]):
            lines.append(f"| {i} | {st['label']} | {pct(st['accuracy'], ' %')} | {ms(st['p50_ms'], ' ms')} | {_rel(st['relative_latency'])} | {st['meets']} |")
        lines.append("")
    st = s.get("study")
    if st:
        lines += ["### Optuna study", "", f"Study `{st['study_name']}` ({s['storage_kind']}): {st['complete']} complete, {st['failed']} failed, "
                  f"{st['interrupted']} interrupted, {st['skipped']} skipped.", ""]
        failed = [t for t in st["trials"] if t["error"]]
        for t in failed:
            lines.append(f"- trial {t['number']} failed: {t['error']}")
        lines.append("")
    space = s.get("space") or {}
    lines += ["### Pareto front (accuracy vs latency)", "", "![pareto](plots/pareto.png)", ""]
    if space:
        alphas = ", ".join(f"{a:g}" for a in space.get("smoothquant_alphas", [])) or "none"
        lines += [f"Search space: formats {', '.join(space.get('formats', []))}; SmoothQuant alphas {alphas}; methods {', '.join(space.get('methods', []))}; "
                  "per-group float fallback. The front is taken over every format together.", ""]
    lines += ["| config | format | source | accuracy | p50 | vs float | meets |", "|---|---|---|---:|---:|---:|---|"]
    for r in s["pareto"]:
        lines.append(f"| {r['label']} | {scheme_label(r['config'])} | {r['source']} | {pct(r['accuracy'], ' %')} | {ms(r['p50_ms'], ' ms')} | {_rel(r['relative_latency'])} | {r['meets']} |")
    schemes: dict[str, list[dict[str, Any]]] = {}
    for r in s.get("records", []):
        if r.get("status") == "ok" and r.get("accuracy") is not None:
            schemes.setdefault(scheme_label(r["config"]), []).append(r)
    if len(schemes) > 1:
        lines += ["", "Best configuration of each format (every evaluated configuration, this worker):", "",
                  "| format | configs | best accuracy | its p50 vs float | fastest vs float | its accuracy |", "|---|---:|---:|---:|---:|---:|"]
        for scheme, recs in schemes.items():
            acc = max(recs, key=lambda r: r["accuracy"])
            timed = [r for r in recs if r.get("relative_latency") is not None]
            fast = min(timed, key=lambda r: r["relative_latency"]) if timed else None
            lines.append(f"| {scheme} | {len(recs)} | {pct(acc['accuracy'], ' %')} | {_rel(acc.get('relative_latency'))} | "
                         f"{_rel(fast['relative_latency']) if fast else '—'} | {pct(fast['accuracy'], ' %') if fast else '—'} |")
    return "\n".join(lines) + "\n"
