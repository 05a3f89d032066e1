"""The cross-run comparison on hand-made reports: the recommendation rule and its numbers, the Pareto front,
the comparison shape, and the Markdown-to-HTML converter of `quantize report --format html`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_workbench.core.results import LatencyStats, RunResult, VariantResult
from quant_workbench.report.compare import (
    RunEntry,
    build_comparison,
    decision_shapes,
    pareto_front,
    render_compare_markdown,
)
from quant_workbench.report.html import markdown_to_html

HW = {"cpu": "test CPU", "cores": 2}
VERSIONS = {"quant_workbench": "0", "onnxruntime": "1"}
RECIPE: dict[str, Any] = {"benchmark": {"iterations": 20}, "engine": {"threads": 0}, "selection": {"level": 0.05}}


def _lat(b: int, s: int, p50: float) -> LatencyStats:
    return LatencyStats(b, s, 20, p50, p50, p50, p50, b / p50 * 1000, p50_low_ms=0.95 * p50, p50_high_ms=1.05 * p50)


def _variant(name: str, acc: float, p50: dict[tuple[int, int], float], precision: str = "int8") -> VariantResult:
    return VariantResult(
        name=name, precision=precision, metrics={"accuracy": acc},  # type: ignore[arg-type]
        latency=[_lat(b, s, x) for (b, s), x in p50.items()], intervals={"accuracy": [acc - 0.01, acc + 0.01]},
    )


def _entry(label: str, float_acc: float, float_ms: float, sel_acc: float, sel_ms: float, *, seq: int = 128,
           recipe: dict[str, Any] | None = None) -> RunEntry:
    flt = _variant("float", float_acc, {(1, seq): float_ms / 10, (32, seq): float_ms}, "float32")
    sel = _variant("int8-max", sel_acc, {(1, seq): sel_ms / 10, (32, seq): sel_ms})
    sel.speedup_vs_float = {f"b32xs{seq}": float_ms / sel_ms}
    result = RunResult(
        recipe_name=label, run_id="x", task="embedding", primary_metric="accuracy", created_utc="", versions=VERSIONS,
        hardware=HW, recipe_hash="h", data={"fingerprint": "d"}, calibration={}, variants=[flt, sel], best_variant="int8-max",
    )
    return RunEntry(label=label, run_dir=Path(label), result=result, recipe=recipe if recipe is not None else RECIPE, conditions={"concurrent_runs": 1})


def test_recommends_the_fastest_run_within_the_margin_of_the_best_float() -> None:
    entries = [
        _entry("big", 0.810, 300.0, 0.808, 150.0),  # best float 81.0 %: threshold 80.5 %
        _entry("mid", 0.800, 200.0, 0.806, 90.0),  # within the margin, faster: recommended
        _entry("tiny", 0.700, 50.0, 0.690, 20.0),  # fastest, far below the threshold
    ]
    rec = build_comparison(entries)["recommendation"]
    assert rec["margin"] == 0.005 and "default" in rec["margin_source"]
    assert rec["best_float"] == {"run": "big", "accuracy": 0.810}
    assert abs(rec["threshold"] - 0.805) < 1e-12
    assert [c["run"] for c in rec["candidates"]] == ["big", "mid"]
    assert rec["recommended"]["run"] == "mid" and rec["recommended"]["p50_ms"] == 90.0
    text = render_compare_markdown(entries, build_comparison(entries))
    assert "within 0.50 points of the best float accuracy" in text and "**Recommended: mid, variant int8-max**" in text
    assert "threshold 80.50 %" in text


def test_margin_from_the_recipes_selection_settings_and_no_candidate() -> None:
    recipe = {**RECIPE, "selection": {"level": 0.05, "accuracy_margin": 0.001}}
    entries = [_entry("big", 0.810, 300.0, 0.808, 150.0, recipe=recipe), _entry("mid", 0.800, 200.0, 0.806, 90.0, recipe=recipe)]
    rec = build_comparison(entries)["recommendation"]
    assert rec["margin"] == 0.001 and "selection.accuracy_margin" in rec["margin_source"]
    assert rec["recommended"] is None and rec["candidates"] == []
    assert rec["most_accurate_selected"]["run"] == "big"
    assert build_comparison(entries, margin=0.01)["recommendation"]["recommended"]["run"] == "mid"


def test_pareto_front_keeps_points_nothing_beats_on_both_axes() -> None:
    pts = [
        {"run": "a", "accuracy": 0.80, "p50_ms": 100.0},
        {"run": "b", "accuracy": 0.79, "p50_ms": 50.0},
        {"run": "c", "accuracy": 0.78, "p50_ms": 60.0},  # b is faster and more accurate
        {"run": "d", "accuracy": 0.80, "p50_ms": 120.0},  # a is as accurate and faster
        {"run": "e", "accuracy": 0.70, "p50_ms": 10.0},
    ]
    assert [p["run"] for p in pareto_front(pts)] == ["e", "b", "a"]


def test_runs_are_compared_at_the_largest_common_batch_and_their_own_length() -> None:
    entries = [_entry("long", 0.8, 300.0, 0.8, 150.0, seq=128), _entry("short", 0.8, 150.0, 0.8, 80.0, seq=64)]
    assert decision_shapes(entries) == {"long": (32, 128), "short": (32, 64)}
    points = build_comparison(entries)["points"]
    assert {(p["run"], p["role"], p["shape"]) for p in points} == {
        ("long", "float", "b32xs128"), ("long", "selected", "b32xs128"), ("short", "float", "b32xs64"), ("short", "selected", "b32xs64"),
    }


def test_markdown_subset_to_html() -> None:
    md = "\n".join([
        "# Title",
        "",
        "Some **bold** text with `a|b <c>` code and a [link](other.md).",
        "",
        "| Name | Value |",
        "| --- | ---: |",
        "| x \\| y | **1.00×** |",
        "",
        "- item one",
        "  - nested `code`",
        "- **failed**:",
        "",
        "  ```text",
        "  line <1>",
        "  ```",
        "",
        "![plot](plots/p.png)",
    ])
    page = markdown_to_html(md, lambda src: "data:image/png;base64,AAAA" if src == "plots/p.png" else None)
    assert '<h1 id="title">Title</h1>' in page
    assert "<strong>bold</strong>" in page and "<code>a|b &lt;c&gt;</code>" in page and '<a href="other.md">link</a>' in page
    assert "<th>Name</th>" in page and '<th class="num">Value</th>' in page
    assert "<td>x | y</td>" in page and '<td class="num"><strong>1.00×</strong></td>' in page
    assert "<li>item one\n<ul>\n<li>nested <code>code</code></li>\n</ul></li>" in page
    assert "<pre><code>line &lt;1&gt;</code></pre>" in page  # the fenced block stays inside its list item
    assert page.index("<pre>") < page.rindex("</ul>")
    assert '<img src="data:image/png;base64,AAAA" alt="plot">' in page
    assert "image not found: missing.png" in markdown_to_html("![x](missing.png)")
