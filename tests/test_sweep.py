"""`quantize sweep`: axes and named runs expand to the right recipes, a bad value stops everything before the
first run, finished runs are reused (no stage runs, no artifact changes), a failing run is recorded while the
others finish (exit 3), and --jobs runs workers and says parallel timing is unfair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_fixtures import recipe_dict

import quant_workbench.pipeline.run as run_module
from quant_workbench.cli import main
from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.config.sweep import SweepError, SweepSpec
from quant_workbench.core.errors import WorkbenchError
from quant_workbench.pipeline.sweep import expand, load_sweep
from quant_workbench.report.markdown import PLOT_RELPATH


def _base(out: Path, tiny_bert_dir: Path, tiny_csv: Path) -> dict[str, Any]:
    data = recipe_dict(out, tiny_bert_dir, tiny_csv)
    data["references"] = []  # the standard tools' rows cost time and change nothing here
    return data


def _write_sweep(folder: Path, base: dict[str, Any], sweep: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}, sort_keys=False), encoding="utf-8")
    return path


def _one_paragraph(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("error: ") == 1, err
    return " ".join(err[err.find("error: "):].split())


# ---------------------------------------------------------------------------------------------
# expansion and validation (nothing runs)


def test_grid_then_named_runs_in_order_with_set_semantics(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    spec = SweepSpec.model_validate({
        "name": "s",
        "base": "b.yaml",
        "axes": {"model.max_seq_length": [32, 16], "quantization.calibration.methods": [["max"], ["mse"], ["max", "mse"]]},
        "runs": [{"name": "deep-16", "set": {"model.num_layers": None, "benchmark.seq_lengths": [8], "export.float_tolerance": 1.0e-5}}],
    })
    runs = expand(spec)
    assert [label for label, _ in runs] == [
        "max_seq_length=32,methods=[max]", "max_seq_length=32,methods=[mse]", "max_seq_length=32,methods=[max, mse]",
        "max_seq_length=16,methods=[max]", "max_seq_length=16,methods=[mse]", "max_seq_length=16,methods=[max, mse]",
        "deep-16",
    ]
    base = _base(tmp_path, tiny_bert_dir, tiny_csv)
    recipes = [recipe_from_dict(base, overrides) for _, overrides in runs]
    assert [(r.model.max_seq_length, r.quantization.calibration.methods) for r in recipes[:6]] == [
        (32, ["max"]), (32, ["mse"]), (32, ["max", "mse"]), (16, ["max"]), (16, ["mse"]), (16, ["max", "mse"]),
    ]
    named = recipes[6]
    assert named.model.num_layers is None and named.benchmark.seq_lengths == [8] and named.export.float_tolerance == 1.0e-5
    # the same --set strings as on the command line
    assert runs[6][1] == ["model.num_layers=null", "benchmark.seq_lengths=[8]", "export.float_tolerance=1.0e-05"]


def test_axes_sharing_a_last_key_are_labelled_by_full_path() -> None:
    spec = SweepSpec.model_validate({"name": "s", "base": "b.yaml", "axes": {"engine.threads": [1], "benchmark.threads": [2]}})
    assert expand(spec) == [("engine.threads=1,benchmark.threads=2", ["engine.threads=1", "benchmark.threads=2"])]


@pytest.mark.parametrize(
    ("axes", "words"),
    [
        ({"model.num_layers": [1, 0]}, ["run 'num_layers=0'", "'model.num_layers' = 0", "greater than or equal to 1"]),
        ({"model.num_layer": [1]}, ["run 'num_layer=1'", "unknown key 'model.num_layer'"]),
        ({"model.num_layers": [1, 5]}, ["run 'num_layers=5'", "model.num_layers=5 exceeds the 2 encoder layers"]),
        ({"model.max_seq_length": [16, 80]}, ["run 'max_seq_length=80'", "exceeds the model's limit of 64"]),
    ],
)
def test_a_bad_axis_value_stops_the_sweep_before_any_run(
    axes: dict[str, Any], words: list[str], tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_run(*a: Any, **k: Any) -> Any:
        raise AssertionError("a run started although the sweep is invalid")

    monkeypatch.setattr(run_module, "execute", no_run)
    base = _base(tmp_path, tiny_bert_dir, tiny_csv)
    base["benchmark"]["seq_lengths"] = [8]
    path = _write_sweep(tmp_path / "sw", base, {"name": "bad", "axes": axes})
    code = main(["sweep", str(path), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2
    msg = _one_paragraph(err)
    for w in words:
        assert w in msg, (w, msg)
    assert "none was started" in msg
    assert not (tmp_path / "reports").exists()  # no run folder, no sweep folder


@pytest.mark.parametrize(
    ("sweep", "words"),
    [
        ({"name": "s", "axis": {"model.num_layers": [1]}}, ["unknown key 'axis'", "axes"]),
        ({"name": "s", "axes": {"model.num_layers": []}}, ["axis 'model.num_layers' has no values"]),
        ({"name": "s", "axes": {"model..x": [1]}}, ["not a dotted recipe path"]),
        ({"name": "s", "runs": [{"name": "a"}, {"name": "a"}]}, ["run names must not repeat"]),
        ({"name": "s", "runs": [{"name": "a", "set": {"seed": 1}}, {"name": "b", "set": {"seed": 1}}]}, ["runs 'a' and 'b' resolve to the same recipe"]),
    ],
)
def test_sweep_file_mistakes_are_one_paragraph(sweep: dict[str, Any], words: list[str], tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path) -> None:
    path = _write_sweep(tmp_path / "sw", _base(tmp_path, tiny_bert_dir, tiny_csv), sweep)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_inline_base_and_dry_run_lists_runs(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _base(tmp_path, tiny_bert_dir, tiny_csv)
    path = tmp_path / "inline.yaml"
    path.write_text(yaml.safe_dump({"name": "inl", "base": base, "axes": {"seed": [1, 2]}}), encoding="utf-8")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed=1" in out and "seed=2" in out and out.count("would run") == 2
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------
# a real sweep on the tiny model: two good runs and one that fails at run time


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, tiny_csv: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sweep")
    base = _base(root, tiny_bert_dir, tiny_csv)
    path = _write_sweep(root / "def", base, {
        "name": "tinysweep",
        "set": {"name": "tinysweep"},
        "axes": {"model.num_layers": [None, 1]},
        # valid as a recipe, fails in the model stage: the sweep must record it and go on
        "runs": [{"name": "bad-target", "set": {"quantization.targets": ["encoder.layer.9"]}}],
    })
    code = main(["sweep", str(path), "--no-progress"])
    folder = root / "reports" / "tinysweep"
    return {"code": code, "path": path, "folder": folder, "json": json.loads((folder / "sweep.json").read_text())}


def test_a_failing_run_is_recorded_and_the_others_finish(swept: dict[str, Any]) -> None:
    assert swept["code"] == 3
    runs = {r["label"]: r for r in swept["json"]["runs"]}
    assert [r["label"] for r in swept["json"]["runs"]] == ["num_layers=null", "num_layers=1", "bad-target"]
    assert runs["num_layers=null"]["status"] == runs["num_layers=1"]["status"] == "ok"
    assert runs["bad-target"]["status"] == "failed" and "matches no module" in runs["bad-target"]["error"]
    for label in ("num_layers=null", "num_layers=1"):
        run_dir = Path(runs[label]["run_dir"])
        assert (run_dir / "report.json").is_file()
        assert json.loads((run_dir / "benchmark_conditions.json").read_text())["concurrent_runs"] == 1
    md = (swept["folder"] / "sweep.md").read_text()
    assert "## Failed runs" in md and "**bad-target**" in md and "matches no module" in md
    assert "## Recommendation" in md and "Recommended:" in md
    assert (swept["folder"] / "plots" / "accuracy_vs_latency_runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one row per run in the comparison, from the runs' own reports
    assert {r["label"] for r in swept["json"]["comparison"]["runs"]} == {"num_layers=null", "num_layers=1"}
    depth = {r["label"]: r["rows"][0]["size_bytes"] for r in swept["json"]["comparison"]["runs"]}
    assert depth["num_layers=1"] < depth["num_layers=null"]  # the one-block float graph is smaller


def test_second_invocation_reuses_every_finished_run(swept: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {r["label"]: Path(r["run_dir"]) for r in swept["json"]["runs"]}
    before = {p: p.stat().st_mtime_ns for label in ("num_layers=null", "num_layers=1") for p in runs[label].rglob("*") if p.is_file()}
    started: list[str] = []
    real = run_module.execute

    def counting(recipe: Any, **kw: Any) -> Any:
        started.append(recipe.quantization.targets[0])
        return real(recipe, **kw)

    monkeypatch.setattr(run_module, "execute", counting)
    code = main(["sweep", str(swept["path"]), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 3  # the failing run is tried again, and fails again
    assert started == ["encoder.layer.9"]  # only the unfinished run started
    assert out.count("finished earlier, reused") == 2
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # no artifact of a finished run was touched
    data = json.loads((swept["folder"] / "sweep.json").read_text())
    assert [r["reused"] for r in data["runs"]] == [True, True, False]


def test_jobs_run_in_worker_processes_and_warn_that_parallel_timing_is_unfair(
    tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quant_workbench.core.lock import RunLock

    path = _write_sweep(tmp_path / "sw", _base(tmp_path, tiny_bert_dir, tiny_csv), {"name": "par", "axes": {"seed": [1, 2]}})
    sweep = load_sweep(path)
    # both run folders held by "another run": each worker process fails at once, and the sweep records why
    locks = [RunLock(run.run_dir) for run in sweep.runs]
    for lock in locks:
        lock.acquire()
    try:
        code = main(["sweep", str(path), "--jobs", "2", "--no-progress"])
    finally:
        for lock in locks:
            lock.release()
    out, err = capsys.readouterr()
    assert code == 3
    assert "--jobs 2 with benchmarks on" in out and "not comparable" in out
    data = json.loads((tmp_path / "reports" / "par" / "sweep.json").read_text())
    assert data["jobs"] == 2
    assert [r["status"] for r in data["runs"]] == ["failed", "failed"]
    assert all("is in use by another run" in r["error"] for r in data["runs"])
    assert all(r["concurrent_runs"] == 2 for r in data["runs"])


def test_jobs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(tmp_path / "x.yaml"), "--jobs", "0"]) == 2
    assert "--jobs 0" in _one_paragraph(capsys.readouterr().err)


def test_workbench_error_is_the_failure_record(swept: dict[str, Any]) -> None:
    # the record is the user-facing text (message + hint), as the single-run CLI prints it
    bad = next(r for r in swept["json"]["runs"] if r["label"] == "bad-target")
    assert "Hint:" in bad["error"] and not bad["error"].startswith(WorkbenchError.__name__)


# ---------------------------------------------------------------------------------------------
# quantize compare / quantize report on the sweep's finished runs (read-only, or on copies)


def _good_dirs(swept: dict[str, Any]) -> list[Path]:
    return [Path(r["run_dir"]) for r in swept["json"]["runs"] if r["status"] == "ok"]


def _report_cells(report_md: str, variant: str) -> list[str]:
    """The Results-table cells of one variant in a run's report.md."""
    section = report_md[report_md.index("## Results"):]
    row = next(line for line in section.splitlines() if line.startswith(f"| {variant} |") or line.startswith(f"| {variant} (best) |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _latency_cells(report_md: str, variant: str) -> list[str]:
    section = report_md[report_md.index("## Latency"):]
    section = section[: section.index("\n## ", 3)]
    return [line.strip("|").split("|")[1].strip() for line in section.splitlines() if line.startswith(f"| {variant} |")]


def test_compare_prints_the_numbers_of_the_reports(swept: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    dirs = _good_dirs(swept)
    assert main(["compare", *map(str, dirs)]) == 0
    out = capsys.readouterr().out
    for run_dir in dirs:
        md = (run_dir / "report.md").read_text()
        best = json.loads((run_dir / "report.json").read_text())["best_variant"]
        for variant in ("float", best):
            cells = _report_cells(md, variant)
            assert cells[4] in out, (variant, cells[4])  # accuracy with its interval
            if variant != "float":
                assert cells[5] in out, (variant, cells[5])  # Δ vs float with its paired interval
            for p50 in _latency_cells(md, variant):  # p50 with its interval, every shape
                assert p50 in out, (variant, p50)
    assert "## Recommendation" in out and "## Comparable?" in out


def test_compare_tables_come_from_report_json(swept: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(_good_dirs(swept)[0], copy)
    data = json.loads((copy / "report.json").read_text())
    flt = next(v for v in data["variants"] if v["name"] == "float")
    flt["metrics"]["accuracy"] = 0.98765
    flt["intervals"]["accuracy"] = [0.9123, 0.9987]
    sel = next(v for v in data["variants"] if v["name"] == data["best_variant"])
    sel["metrics"]["accuracy"] = 0.12345
    sel["intervals"]["accuracy"] = [0.1001, 0.1502]
    sel["latency"][-1].update(p50_ms=123.456, p50_low_ms=120.0, p50_high_ms=130.0)
    (copy / "report.json").write_text(json.dumps(data))
    (copy / "report.md").write_text("nothing from here is read")
    assert main(["compare", str(copy), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    runs_table = out[out.index("## Runs"):out.index("## Accuracy vs latency across runs")]
    per_run = out[out.index("## Per run"):]
    for section in (runs_table, per_run):  # the summary row and the run's own table
        assert "98.77 (91.2–99.9)" in section and "12.35 (10.0–15.0)" in section and "123.46 (120.00–130.00)" in section
    written = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert written["runs"][0]["rows"][0]["accuracy"] == 0.98765
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# Comparison of finished runs")
    assert (tmp_path / "cmp" / "plots" / "accuracy_vs_latency_runs.png").is_file()


def test_compare_refuses_a_folder_without_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a finished run folder" in _one_paragraph(capsys.readouterr().err)


def test_runs_timed_in_parallel_are_not_comparable(swept: dict[str, Any]) -> None:
    from quant_workbench.report.compare import build_comparison, load_entries

    entries = load_entries(_good_dirs(swept))
    assert build_comparison(entries)["comparability"]["latency"]["comparable"]
    entries[1].conditions = {"concurrent_runs": 2}
    latency = build_comparison(entries)["comparability"]["latency"]
    assert not latency["comparable"] and latency["parallel"] == [entries[1].label]
    assert "not comparable" in latency["statement"]
    entries[1].conditions = {"concurrent_runs": 1}
    entries[1].result.hardware = {**entries[1].result.hardware, "cpu": "another CPU"}
    latency = build_comparison(entries)["comparability"]["latency"]
    assert not latency["comparable"] and latency["groups"][1]["differs_from_first_group"] == ["hardware"]


class _FakeRunner:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.input_names = ["input_ids", "attention_mask"]
        self.shapes: set[tuple[int, ...]] = set()

    def __call__(self, feed: dict[str, Any]) -> object:
        self.log.append(self.name)
        self.shapes.add(tuple(feed["input_ids"].shape))
        return None


def test_retime_times_every_model_in_the_same_shuffled_rounds(swept: dict[str, Any]) -> None:
    from quant_workbench.report.compare import load_entries, retime

    entries = load_entries(_good_dirs(swept))
    log: list[str] = []
    runners: dict[str, _FakeRunner] = {}

    def open_runner(path: Path, spec: Any, threads: int) -> _FakeRunner:
        assert path.is_file() and path.suffix == ".onnx"
        runners[str(path)] = _FakeRunner(str(path), log)
        return runners[str(path)]

    ticks = iter(range(10**6))
    data = retime(entries, batch_sizes=[2], rounds=12, warmup=1, open_runner=open_runner, clock=lambda: float(next(ticks)), say=lambda s: None)
    names = list(runners)
    assert len(names) == 4  # two runs x (float + selected graph)
    timed = log[len(names):]  # after one warm-up round
    rounds = [timed[i : i + len(names)] for i in range(0, len(timed), len(names))]
    assert len(rounds) == 12
    assert all(sorted(r) == sorted(names) for r in rounds)  # every model in every round, once
    assert len({tuple(r) for r in rounds}) > 1  # a fresh order each round
    shape = data["shapes"][0]
    assert len(shape["orders"]) == 12 and len(shape["runners"]) == 4
    assert all(len(row["samples_ms"]) == 12 for row in shape["runners"].values())
    assert all(r.shapes == {(2, 16)} for r in runners.values())  # each run at its own benchmarked length
    selected = [row for row in shape["runners"].values() if row["variant"] != "float"]
    assert all("speedup_vs_own_float" in row for row in selected)


def test_retime_on_onnx_runtime_end_to_end(swept: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dirs = _good_dirs(swept)
    assert main(["compare", *map(str, dirs), "--retime", "--batch", "1", "--rounds", "3", "--warmup", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Re-timed in one interleaved loop" in out and "allow_spinning = 0" in out
    data = json.loads((tmp_path / "retime.json").read_text())
    assert data["session_options"] == {"session.intra_op.allow_spinning": "0"}
    assert len(data["shapes"][0]["runners"]) == 4


def test_report_rerenders_markdown_and_plot_from_report_json(swept: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(_good_dirs(swept)[0], copy)
    original = (copy / "report.md").read_text()
    (copy / "report.md").unlink()
    (copy / PLOT_RELPATH).unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == original
    assert (copy / PLOT_RELPATH).is_file()
    assert not (copy / "report.html").exists()


def test_report_html_is_one_standalone_page(swept: dict[str, Any], tmp_path: Path) -> None:
    import base64
    import re
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(_good_dirs(swept)[0], copy)
    assert main(["report", str(copy), "--format", "html"]) == 0
    page = (copy / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert page.count("<table>") >= 3 and "<th" in page and "<td" in page
    accuracy = _report_cells((copy / "report.md").read_text(), "float")[4]
    assert accuracy in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    plot = (copy / PLOT_RELPATH).read_bytes()
    assert base64.b64decode(images[0].split(",", 1)[1]) == plot
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page


def test_report_html_on_the_sweep_folder(swept: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(swept["folder"], copy, ignore=shutil.ignore_patterns("*.lock"))
    assert main(["report", str(copy), "--format", "html"]) == 0
    page = (copy / "sweep.html").read_text()
    assert "<h1" in page and "Recommended:" in page and "data:image/png;base64," in page


def test_help_lists_every_command_with_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("deploy", "sweep", "compare", "report"):
        assert f"\n  {command} " in out, command  # one line each under "commands:"
    assert "exit codes:" in out and "quantize COMMAND --help" in out
    for command in ("deploy", "sweep", "compare", "report"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: quantize {command}" in text and "example" in text and "exit codes" in text, command


def test_the_example_sweep_expands_to_valid_runs() -> None:
    root = Path(__file__).resolve().parents[1]
    sweep = load_sweep(root / "recipes" / "sweeps" / "minilm_sweep.yaml")  # every run validated, its model config checked
    assert [r.label for r in sweep.runs] == ["num_layers=6", "num_layers=3", "num_layers=2", "L6-len64"]
    assert [(r.recipe.model.num_layers, r.recipe.model.max_seq_length, r.recipe.benchmark.seq_lengths) for r in sweep.runs] == [
        (6, 128, [128]), (3, 128, [128]), (2, 128, [128]), (6, 64, [64]),
    ]
    assert all(r.recipe.data.eval_samples == 3000 and r.recipe.name == "minilm_sweep" for r in sweep.runs)
    assert sweep.folder == Path("reports") / "minilm_sweep"
