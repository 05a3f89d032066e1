"""Report rendering from a hand-built RunResult: JSON round trip, Markdown content, plot, terminal table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quant_workbench.core.results import LatencyStats, RunResult, VariantResult
from quant_workbench.report.markdown import (
    render_markdown,
    results_table,
    write_report,
)
from quant_workbench.report.sections.decisions import delta_vs_speedup_figure, plot_delta_vs_speedup

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lat(b: int, s: int, p50: float) -> LatencyStats:
    return LatencyStats(
        batch_size=b,
        seq_length=s,
        iterations=20,
        p50_ms=p50,
        p95_ms=p50 * 1.1,
        p99_ms=p50 * 1.2,
        mean_ms=p50 * 1.05,
        throughput_seq_per_s=b / (p50 / 1000),
    )


@pytest.fixture
def result() -> RunResult:
    float_v = VariantResult(
        name="float",
        precision="float32",
        metrics={"accuracy": 0.9125, "macro_f1": 0.9012},
        fidelity={"max_abs_diff": 3.2e-06, "passed": True},
        latency=[_lat(1, 128, 10.0), _lat(32, 128, 200.0)],
        size_bytes=90_000_000,
        engine={"provider": "CPUExecutionProvider", "integer_matmul_count": 0},
    )
    int8 = VariantResult(
        name="int8-entropy",
        precision="int8",
        calibration_method="entropy",
        metrics={"accuracy": 0.9050, "macro_f1": 0.8950, "agreement": 0.9800, "cosine_to_float": 0.99871},
        fidelity={
            "cosine_to_float": 0.99871,
            "per_layer": [{"name": f"layer.{i}", "cosine": 0.999 - i * 0.001} for i in range(12)],
            "thresholds": {"min_cosine": 0.99, "ok": True},
        },
        latency=[_lat(1, 128, 5.0), _lat(32, 128, 80.0)],
        speedup_vs_float={"b1xs128": 2.0, "b32xs128": 2.5},
        size_bytes=23_000_000,
        engine={"provider": "CPUExecutionProvider", "integer_matmul_count": 36},
    )
    failed = VariantResult(
        name="int8-mse",
        precision="int8",
        calibration_method="mse",
        status="failed",
        error="ONNX Runtime rejected the graph: node | MatMulInteger_7 has no kernel",
    )
    return RunResult(
        recipe_name="bert_int8",
        run_id="20240101-120000-abc123",
        task="sequence-classification",
        primary_metric="accuracy",
        created_utc="2024-01-01T12:00:00Z",
        versions={"python": "3.11.2", "onnxruntime": "1.20.0"},
        hardware={"cpu": "Test CPU @ 2.0GHz", "cores": 16, "avx512_vnni": True},
        recipe_hash="f" * 64,
        data={"splits": {"calibration": 512, "eval": 1000}, "label_names": ["neg", "pos"]},
        calibration={
            "cache_key": "abc",
            "cache_hit": False,
            "seconds": 12.5,
            "amax": {"entropy": {"mean": 4.2, "max": 17.0}},
        },
        variants=[float_v, int8, failed],
        best_variant="int8-entropy",
        selection_rule="fastest variant within 1.0 accuracy point of float",
        timings_s={"calibrate": 12.5, "benchmark": 30.0},
    )


def test_write_report_artifacts(result: RunResult, tmp_path: Path) -> None:
    paths = write_report(result, tmp_path / "run")
    assert set(paths) == {"json", "markdown", "plot"}
    assert paths["plot"] == tmp_path / "run" / "plots" / "delta_vs_speedup.png"
    for p in paths.values():
        assert p.is_file()
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    loaded = RunResult.from_dict(json.loads(paths["json"].read_text(encoding="utf-8")))
    assert loaded == result
    assert "![paired Δ accuracy vs speed-up](plots/delta_vs_speedup.png)" in paths["markdown"].read_text(
        encoding="utf-8"
    )
    # Atomic writes leave no temporary files behind.
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_markdown_sections_and_numbers(result: RunResult) -> None:
    md = render_markdown(result)
    assert md.startswith("# Quantization report: bert_int8")
    assert "20240101-120000-abc123" in md
    for section in (
        "## Selected variant",
        "## Results",
        "## Latency",
        "## Fidelity",
        "## Engine",
        "## Failed variants",
        "## Calibration",
        "## Data",
        "## Machine",
        "## Versions",
    ):
        assert section in md, section
    assert "91.25" in md and "90.50" in md  # accuracy in %
    assert "-0.75" in md  # delta vs float in points
    assert "89.50" in md and "98.00" in md  # macro F1 and agreement
    assert "0.9987" in md  # cosine keeps 4 decimals
    assert "2.50×" in md and "1.00×" in md  # speed-ups, float is its own reference
    assert "200.00" in md and "80.00" in md  # p50 ms at batch 32
    assert "90.00" in md and "23.00" in md  # sizes in MB
    assert "fastest variant within 1.0 accuracy point of float" in md
    assert "**int8-entropy**" in md
    assert "Test CPU @ 2.0GHz" in md and "onnxruntime" in md
    assert "calibration: 512" in md and "eval: 1000" in md
    assert "integer_matmul_count: 36" in md
    assert "12 entries; worst by cosine (min)" in md and "layer.11" in md  # long list summarised
    assert "MatMulInteger_7 has no kernel" in md
    assert "cache_hit: false" in md


def test_markdown_tables_are_valid(result: RunResult) -> None:
    md = render_markdown(result)
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    assert len(blocks) >= 4  # results, two latency shapes, versions

    def cells(row: str) -> int:
        # Count unescaped pipes: every row of a table must have the same number of columns.
        return row.replace("\\|", "").count("|")

    for block in blocks:
        assert all(cells(r) == cells(block[0]) for r in block), block
        assert set(block[1].replace("|", "").replace(" ", "")) <= {"-", ":"}


def test_pipes_escaped_in_table_cells(result: RunResult) -> None:
    result.variants[1].name = "int8|weird"
    result.best_variant = "int8|weird"
    md = render_markdown(result)
    assert "int8\\|weird" in md


def test_results_table_terminal(result: RunResult) -> None:
    text = results_table(result)
    for name in ("float", "int8-entropy", "int8-mse"):
        assert name in text
    assert "91.25" in text and "-0.75" in text and "2.50×" in text
    assert "p50 b1 ms" in text and "p50 b32 ms" in text
    assert "failed" in text and "MatMulInteger_7 has no kernel" in text
    assert "* best: int8-entropy" in text


def test_plot_deterministic_and_at_the_selection_shape(result: RunResult, tmp_path: Path) -> None:
    a = plot_delta_vs_speedup(result, tmp_path / "a.png")
    b = plot_delta_vs_speedup(result, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    result.selection = {"shape": "b1xs128"}
    c = plot_delta_vs_speedup(result, tmp_path / "c.png")
    assert c.read_bytes()[:8] == PNG_MAGIC
    assert c.read_bytes() != a.read_bytes()


def test_report_without_latency_or_float(result: RunResult, tmp_path: Path) -> None:
    for v in result.variants:
        v.latency = []
        v.speedup_vs_float = {}
    result.variants = result.variants[1:]
    result.best_variant = None
    paths = write_report(result, tmp_path)
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "No latency was measured." in md and "No variant was selected." in md
    assert "int8-mse" in results_table(result)


# ---------------------------------------------------------------------------------------------
# intervals (issue 10)

# The README's default run: int8-max/int8-mse and int8-percentile/int8-entropy sit within a few
# hundredths of a millisecond and a tenth of a point of each other, where labels used to collide.
_DEFAULT_RUN = [
    ("float", "float32", 0.7245, 16.35),
    ("int8-max", "int8", 0.7210, 8.58),
    ("int8-percentile", "int8", 0.7100, 8.36),
    ("int8-entropy", "int8", 0.7095, 8.59),
    ("int8-mse", "int8", 0.7195, 8.42),
]


def _with_intervals(name: str, precision: str, acc: float, p50: float) -> VariantResult:
    lat = _lat(1, 128, p50)
    lat.p50_low_ms, lat.p50_high_ms = p50 * 0.97, p50 * 1.04
    intervals: dict[str, object] = {"level": 0.05, "n": 2000, "accuracy": [acc - 0.0197, acc + 0.0193], "macro_f1": [0.6, 0.7]}
    if name != "float":
        intervals["vs_float"] = {"delta": acc - 0.7245, "delta_low": acc - 0.7245 - 0.006, "delta_high": acc - 0.7245 + 0.005,
                                 "discordant": 70, "disagreements": 90, "level": 0.05}
    return VariantResult(
        name=name, precision=precision,  # type: ignore[arg-type]
        metrics={"accuracy": acc, "agreement": 0.95}, latency=[lat], intervals=intervals,
        speedup_vs_float={} if name == "float" else {"b1xs128": 16.35 / p50},
        speedup_interval_vs_float={} if name == "float" else {"b1xs128": [16.35 / p50 * 0.95, 16.35 / p50 * 1.05]},
    )


@pytest.fixture
def crowded(result: RunResult) -> RunResult:
    result.variants = [_with_intervals(*row) for row in _DEFAULT_RUN]
    result.best_variant = "int8-mse"
    result.task = "embedding"
    result.selection = {"tie_groups": {"accuracy": ["int8-max", "int8-mse"], "speed": ["int8-max", "int8-mse"]},
                        "most_accurate": "int8-max", "fastest": "int8-mse", "shape": "b1xs128", "reason": "because -> int8-mse."}
    return result


def test_plot_shows_what_decides_paired_delta_against_speedup_with_the_margins(crowded: RunResult) -> None:
    crowded.selection = {**crowded.selection, "accuracy_margin": 0.005, "speed_margin": 0.03}
    fig = delta_vs_speedup_figure(crowded)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "Δ accuracy" in ax.get_ylabel() and "speed-up" in ax.get_xlabel()
    offsets = {tuple(np.round(c.get_offsets()[0], 4)) for c in ax.collections if type(c).__name__ == "PathCollection"}
    mse = next(v for v in crowded.variants if v.name == "int8-mse")
    assert (round(mse.speedup_vs_float["b1xs128"], 4), round(100 * mse.intervals["vs_float"]["delta"], 4)) in offsets
    assert (1.0, 0.0) in offsets  # float itself
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("non-inferiority margin" in t for t in legend)  # the accuracy margin band
    assert any("±3 % of the fastest acceptable (int8-mse)" in t for t in legend)  # the speed margin band
    bands = [p for p in ax.patches if type(p).__name__ in ("Rectangle", "Polygon")]
    assert len(bands) >= 2


def test_plot_labels_overlap_neither_each_other_nor_the_points(crowded: RunResult) -> None:
    from matplotlib.collections import PathCollection
    from matplotlib.text import Annotation, Text

    fig = delta_vs_speedup_figure(crowded)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    assert sorted(t.get_text().split("\n")[0] for t in labels) == sorted(r[0] for r in _DEFAULT_RUN)
    # the text itself: an Annotation's own extent also covers its leader line, which must reach the point
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    axes_box = ax.get_window_extent(renderer)
    markers = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(markers) == len(_DEFAULT_RUN) + 1  # one per point (float at 1x, 0 pt) and the ring around the selected one
    for coll in markers:
        radius_px = (max(coll.get_sizes()) ** 0.5) / 2 * fig.dpi / 72
        for px, py in ax.transData.transform(coll.get_offsets()):
            for box in boxes:
                # the marker's own disc (a square around it would be stricter than what is drawn)
                nx, ny = min(max(px, box.x0), box.x1), min(max(py, box.y0), box.y1)
                assert (nx - px) ** 2 + (ny - py) ** 2 > radius_px**2, (box, px, py)
    for box in boxes:
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
    # error bars on both axes: one vertical and one horizontal segment collection per variant (float has none)
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    assert len(bars) == 2 * (len(_DEFAULT_RUN) - 1)


def test_a_crowded_plot_labels_the_selected_the_baselines_and_the_pareto_front(crowded: RunResult) -> None:
    from matplotlib.text import Annotation

    # five more rows, each slower and less accurate than int8-max: dominated, so unlabelled beyond 8 points
    crowded.variants += [_with_intervals(f"int8-slow{i}", "int8", 0.7150 - 0.001 * i, 9.5 + i) for i in range(5)]
    crowded.selection = {**crowded.selection, "speed_baseline": "float"}
    ax = delta_vs_speedup_figure(crowded).axes[0]
    labels = sorted(t.get_text().split("\n")[0] for t in ax.texts if isinstance(t, Annotation))
    assert labels == ["float", "int8-max", "int8-mse", "int8-percentile"]  # float, the selected, the non-dominated
    assert "Pareto front" in ax.get_title()


def test_intervals_in_tables_and_selection_section(crowded: RunResult) -> None:
    md = render_markdown(crowded)
    assert "72.10 (70.1–74.0)" in md  # accuracy with its interval
    assert "-0.35 (-0.95 to +0.15)" in md  # paired Δ with its interval
    assert "90 / 70" in md  # disagreements / discordant
    assert "8.58 (8.32–8.92)" in md  # p50 with its interval
    assert "1.91× (1.81–2.00)" in md  # speed-up with its interval
    assert "Tied on accuracy with the most accurate (int8-max): int8-max, int8-mse" in md
    assert "because -> int8-mse." in md
    text = results_table(crowded)
    assert "72.10 (70.1–74.0)" in text and "-0.35 (-0.95 to +0.15)" in text


def test_v1_report_still_loads(result: RunResult) -> None:
    d = result.to_dict()
    d["schema_version"] = 1
    for key in ("selection",):
        d.pop(key)
    for v in d["variants"]:
        for key in ("reference", "intervals", "speedup_interval_vs_float"):
            v.pop(key)
        for st in v["latency"]:
            for key in ("p50_low_ms", "p50_high_ms", "samples_ms", "stop"):
                st.pop(key)
    loaded = RunResult.from_dict(d)
    assert loaded.schema_version == 1 and loaded.variants[1].intervals == {} and loaded.variants[1].latency[0].samples_ms == []
    assert "91.25" in render_markdown(loaded)
