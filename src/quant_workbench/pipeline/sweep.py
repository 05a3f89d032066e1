"""`quantize sweep SWEEP.yaml`: one base recipe, axes of values, every combination an ordinary run, one report.

A sweep file (validated like a recipe: unknown keys are errors):

    name: minilm_sweep                  # the sweep folder: <output_dir>/<name>/ (sweep.md, sweep.json, plots/)
    base: bert_int8.yaml                # a recipe path relative to this file, or an inline recipe mapping
    set:                                # --set overrides applied to every run
      data.eval_samples: 3000
    axes:                               # the grid: every combination of these values is a run
      model.num_layers: [null, 3]
      quantization.calibration.methods: [[max], [mse]]
    runs:                               # named runs beside the grid, for combinations a grid cannot express
      - {name: L6-s64, set: {model.max_seq_length: 64, benchmark.seq_lengths: [64]}}

Every key (in `set`, `axes` and a run's `set`) is a dotted recipe path applied with exactly the semantics of
`quantize RECIPE --set KEY=VALUE` (recipe.apply_overrides), the value written as YAML. Every run's recipe is
validated, and its model's config checked against it, before the first run starts: a bad value is one
exit-2 paragraph naming the run and the field. Each run is an ordinary run folder (run.run_dir_for: keyed by
the resolved recipe's hash, locked, resumable); a run whose report.json is there and valid for the same
recipe hash is reused, not redone. A run that fails is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quant_workbench.config.recipe import Recipe, recipe_from_dict
from quant_workbench.config.sweep import (
    SweepError,
    SweepSpec,
    flow_value,
    read_sweep_spec,
    read_yaml_mapping,
    set_item,
)
from quant_workbench.core.artifacts import write_json, write_text
from quant_workbench.core.errors import RecipeError, WorkbenchError
from quant_workbench.pipeline.run import recipe_hash, run_dir_for
from quant_workbench.report.compare import (
    CONDITIONS_FILE,
    CROSS_PLOT_RELPATH,
    build_comparison,
    failure_lines,
    load_entry,
    plot_cross_run,
    render_comparison,
)
from quant_workbench.report.format import DASH, markdown_table
from quant_workbench.report.schema import ReportError, load_report

log = logging.getLogger(__name__)

SWEEP_SCHEMA_VERSION = 1
EXIT_RUN_FAILED = 3  # the sweep finished, but some run failed or selected no quantized variant


@dataclass
class PlannedRun:
    label: str
    overrides: list[str]  # --set items after the sweep's common ones: what makes this run this run
    recipe: Recipe
    run_dir: Path
    recipe_hash: str

    @property
    def settings(self) -> str:
        return " ".join(self.overrides) or "(the base recipe)"


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    base: dict[str, Any]
    base_source: str
    common: list[str]  # --set items of every run
    runs: list[PlannedRun]
    folder: Path


@dataclass
class RunOutcome:
    label: str
    settings: str
    recipe_hash: str
    run_dir: str
    status: str  # ok | no selection | failed | not run
    reused: bool = False
    error: str | None = None
    seconds: float = 0.0
    best_variant: str | None = None
    concurrent_runs: int | None = None  # how many runs of this sweep ran at once while it ran (None: reused)


# ---------------------------------------------------------------------------------------------
# loading and expanding


def _label(values: dict[str, Any]) -> str:
    """A grid run's label from its axis values: the last part of each key, unless two axes share it."""
    shorts = [k.rsplit(".", 1)[-1] for k in values]
    keys = shorts if len(set(shorts)) == len(shorts) else list(values)
    return ",".join(f"{k}={flow_value(v)}" for k, v in zip(keys, values.values(), strict=True)) or "base"


def expand(spec: SweepSpec) -> list[tuple[str, list[str]]]:
    """(label, --set items) of every run: the grid in axis order (the first axis varies slowest), then the named runs."""
    out: list[tuple[str, list[str]]] = []
    if spec.axes or not spec.runs:
        keys = list(spec.axes)
        for combo in itertools.product(*(spec.axes[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            out.append((_label(values), [set_item(k, v) for k, v in values.items()]))
    out += [(r.name, [set_item(k, v) for k, v in r.set.items()]) for r in spec.runs]
    labels = [label for label, _ in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SweepError(f"two runs of the sweep are both labelled {dup[0]!r}.", "rename the named run (runs: name:) so every label is unique")
    return out


def _read_base(spec: SweepSpec, path: Path) -> tuple[dict[str, Any], str]:
    if isinstance(spec.base, dict):
        return dict(spec.base), f"the inline base of {path}"
    base_path = Path(os.path.normpath(path.parent / spec.base))  # recipes/sweeps/../x.yaml reads as recipes/x.yaml
    if not base_path.is_file():
        raise SweepError(
            f"sweep {path}: base recipe '{spec.base}' resolves to '{base_path}', which is not a file.",
            "base is a path relative to the sweep file (e.g. base: bert_int8.yaml for a recipe beside it), or an inline recipe mapping",
        )
    return read_yaml_mapping(base_path, "base recipe", "a mapping of sections", "start from recipes/bert_int8.yaml"), str(base_path)


def _model_layers(config: dict[str, Any]) -> int | None:
    n = config.get("num_hidden_layers", config.get("n_layers"))  # DistilBERT names it n_layers
    return n if isinstance(n, int) else None


def _check_run(recipe: Recipe, run_dir: Path) -> None:
    """What a run's preflight would refuse about its model, checked for every run before the first one starts."""
    from quant_workbench.core.errors import ModelError
    from quant_workbench.pipeline.preflight import check_bounds, check_run_dir, model_config

    check_run_dir(recipe, run_dir)
    config = model_config(recipe)
    check_bounds(recipe, config)
    layers = _model_layers(config) if config is not None else None
    n = recipe.model.num_layers
    if n is not None and layers is not None and n > layers:
        raise ModelError(
            f"model.num_layers={n} exceeds the {layers} encoder layers of {recipe.model.source}.",
            f"use model.num_layers from 1 to {layers}",
        )


def load_sweep(path: Path | str) -> Sweep:
    """Read, expand and validate a sweep: every run's recipe validated and its model checked before any run."""
    path = Path(path)
    spec = read_sweep_spec(path)
    base, base_source = _read_base(spec, path)
    # the base recipe's extensions are relative to its own folder (an inline base's: the sweep file's)
    base_folder = Path(base_source).parent if not isinstance(spec.base, dict) else path.parent
    common = [set_item(k, v) for k, v in spec.set.items()]
    runs: list[PlannedRun] = []
    problems: list[str] = []
    by_hash: dict[str, str] = {}
    expanded = expand(spec)
    for label, overrides in expanded:
        try:
            recipe = recipe_from_dict(
                base, [*common, *overrides], source=f"of run '{label}' ({' '.join(overrides) or 'the base'})", base_dir=base_folder
            )
            run_dir = run_dir_for(recipe)
            _check_run(recipe, run_dir)
        except WorkbenchError as exc:
            # a recipe error already names the run (its source); other checks get the run's label and overrides
            problems.append(exc.message if isinstance(exc, RecipeError) else f"run '{label}' ({' '.join(overrides) or 'the base'}): {exc}")
            continue
        h = recipe_hash(recipe)
        if h in by_hash:
            problems.append(f"runs '{by_hash[h]}' and '{label}' resolve to the same recipe (hash {h[:12]}), so they would be one run")
            continue
        by_hash[h] = label
        runs.append(PlannedRun(label=label, overrides=overrides, recipe=recipe, run_dir=run_dir, recipe_hash=h))
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise SweepError(
            f"sweep {path}: {len(problems)} of {len(expanded)} runs are invalid, so none was started: {shown}.",
            "fix the axis value or the run's set: entry named above (`quantize sweep FILE --dry-run` lists every run and its overrides)",
        )
    output_dir = spec.output_dir or runs[0].recipe.output_dir
    return Sweep(spec=spec, path=path, base=base, base_source=base_source, common=common, runs=runs, folder=Path(output_dir) / spec.name)


# ---------------------------------------------------------------------------------------------
# running


def finished(run: PlannedRun) -> bool:
    """A run is done when its report.json is there, valid, and written for this very recipe."""
    if not (run.run_dir / "report.json").is_file():
        return False
    try:
        return load_report(run.run_dir).recipe_hash == run.recipe_hash
    except ReportError:
        return False


def _status_of(run_dir: Path) -> tuple[str, str | None, str | None]:
    """(status, error, best variant) of a run that returned: 'no selection' when nothing quantized can ship."""
    result = load_report(run_dir)
    if result.best_variant is not None:
        return "ok", None, result.best_variant
    failed = [v for v in result.variants if v.precision != "float32" and v.status != "ok"]
    detail = "; ".join(f"{v.name}: {(v.error or 'failed').splitlines()[0]}" for v in failed)
    return "no selection", (f"no quantized variant succeeded ({detail})" if failed else "no quantized variant could be selected"), None


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"


def _mark_conditions(run: PlannedRun, sweep: str, concurrent: int) -> None:
    write_json(run.run_dir / CONDITIONS_FILE, {
        "concurrent_runs": concurrent,
        "sweep": sweep,
        "written_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def _child_run(recipe_data: dict[str, Any], expected_hash: str, label: str) -> dict[str, Any]:
    """One run in a worker process (spawned: no torch state inherited); errors come back as data."""
    from quant_workbench.pipeline.run import execute

    def say(text: str) -> None:
        for line in text.splitlines() or [""]:
            print(f"[{label}] {line}", flush=True)

    started = time.perf_counter()
    try:
        recipe = Recipe.model_validate(recipe_data)
        if recipe_hash(recipe) != expected_hash:
            raise RuntimeError("the recipe changed on its way to the worker process (hash mismatch)")
        execute(recipe, progress=False, say=say)
        return {"error": None, "seconds": time.perf_counter() - started}
    except Exception as exc:  # recorded by the parent; the sweep goes on
        log.debug("run %s failed", label, exc_info=True)
        return {"error": _error_text(exc), "seconds": time.perf_counter() - started}


def _run_sequential(sweep: Sweep, todo: list[PlannedRun], outcomes: dict[str, RunOutcome], *, progress: bool, say: Callable[[str], None]) -> None:
    from quant_workbench.pipeline.run import execute

    for i, run in enumerate(todo, 1):
        say(f"== run {i}/{len(todo)}: {run.label} ({run.settings})")
        started = time.perf_counter()
        try:
            execute(run.recipe, progress=progress, say=say)
        except Exception as exc:  # recorded, the sweep goes on; KeyboardInterrupt stops it
            log.debug("run %s failed", run.label, exc_info=True)
            outcomes[run.label] = _outcome(run, "failed", error=_error_text(exc), seconds=time.perf_counter() - started, concurrent=1)
            say(f"== run {run.label} failed: {_error_text(exc).splitlines()[0]}")
            continue
        _mark_conditions(run, sweep.spec.name, 1)
        status, error, best = _status_of(run.run_dir)
        outcomes[run.label] = _outcome(run, status, error=error, seconds=time.perf_counter() - started, best=best, concurrent=1)


def _run_parallel(sweep: Sweep, todo: list[PlannedRun], outcomes: dict[str, RunOutcome], jobs: int, say: Callable[[str], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    concurrent = min(jobs, len(todo))
    # spawn: a forked child would inherit torch's and ONNX Runtime's thread pools mid-state
    with ProcessPoolExecutor(max_workers=concurrent, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_child_run, run.recipe.model_dump(mode="json"), run.recipe_hash, run.label): run for run in todo}
        try:
            for fut in as_completed(futures):
                run = futures[fut]
                try:
                    got = fut.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    got = {"error": f"worker process failed: {_error_text(exc)}", "seconds": 0.0}
                if got["error"] is not None:
                    outcomes[run.label] = _outcome(run, "failed", error=got["error"], seconds=got["seconds"], concurrent=concurrent)
                    say(f"== run {run.label} failed: {got['error'].splitlines()[0]}")
                    continue
                _mark_conditions(run, sweep.spec.name, concurrent)
                status, error, best = _status_of(run.run_dir)
                outcomes[run.label] = _outcome(run, status, error=error, seconds=got["seconds"], best=best, concurrent=concurrent)
                say(f"== run {run.label} finished ({status})")
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _outcome(run: PlannedRun, status: str, *, error: str | None = None, seconds: float = 0.0, best: str | None = None,
             reused: bool = False, concurrent: int | None = None) -> RunOutcome:
    return RunOutcome(label=run.label, settings=run.settings, recipe_hash=run.recipe_hash, run_dir=str(run.run_dir), status=status,
                      reused=reused, error=error, seconds=round(seconds, 2), best_variant=best, concurrent_runs=concurrent)


def effective_jobs(jobs: int, say: Callable[[str], None]) -> int:
    cores = os.cpu_count() or 1
    if jobs > cores:
        say(f"--jobs {jobs} exceeds this machine's {cores} cores; running {cores} at a time")
        return cores
    return max(1, jobs)


PARALLEL_WARNING = (
    "warning: --jobs {jobs} with benchmarks on: runs timed while other runs use the same cores measure the contention, not "
    "the model, so their latencies (and the speed-ups inside one run) are not comparable with runs timed alone; the sweep "
    "report marks them. Time one run at a time (the default) for latencies you can compare, or re-time finished runs "
    "in one interleaved loop with `quantize compare --retime`."
)


def dry_run(sweep: Sweep, say: Callable[[str], None] = print) -> None:
    say(f"# sweep {sweep.spec.name}: {len(sweep.runs)} runs from {sweep.base_source}" + (f", every run with --set {' '.join(sweep.common)}" if sweep.common else ""))
    say(f"# sweep folder: {sweep.folder}")
    for i, run in enumerate(sweep.runs, 1):
        state = "finished: would be reused" if finished(run) else "would run"
        say(f"{i:>3}. {run.label}: {run.settings}\n     run folder {run.run_dir} ({state})")


def run_sweep(sweep: Sweep, *, jobs: int = 1, progress: bool = True, say: Callable[[str], None] = print) -> tuple[int, list[RunOutcome]]:
    """Run (or reuse) every run, then write the sweep report; returns (exit code, outcomes): 0, or 3 when a run
    failed or selected no quantized variant."""
    from quant_workbench.core.lock import RunLock

    started = time.perf_counter()
    jobs = effective_jobs(jobs, say)
    outcomes: dict[str, RunOutcome] = {}
    todo: list[PlannedRun] = []
    for run in sweep.runs:
        if finished(run):
            status, error, best = _status_of(run.run_dir)
            outcomes[run.label] = _outcome(run, status, error=error, best=best, reused=True)
            say(f"== {run.label}: finished earlier, reused ({run.run_dir})")
        else:
            todo.append(run)
    timed = any(r.recipe.benchmark.enabled for r in todo)
    if jobs > 1 and len(todo) > 1 and timed:
        say(PARALLEL_WARNING.format(jobs=jobs))
    with RunLock(sweep.folder):  # two invocations of one sweep would run each run twice
        try:
            if jobs > 1 and len(todo) > 1:
                _run_parallel(sweep, todo, outcomes, jobs, say)
            else:
                _run_sequential(sweep, todo, outcomes, progress=progress, say=say)
        except KeyboardInterrupt:
            for run in sweep.runs:
                outcomes.setdefault(run.label, _outcome(run, "not run", error="the sweep was interrupted before this run finished"))
            write_sweep_report(sweep, [outcomes[r.label] for r in sweep.runs], jobs=jobs, seconds=time.perf_counter() - started)
            raise
        ordered = [outcomes[r.label] for r in sweep.runs]
        paths = write_sweep_report(sweep, ordered, jobs=jobs, seconds=time.perf_counter() - started)
    bad = [o for o in ordered if o.status != "ok"]
    say(f"sweep report: {paths['markdown']} ({len(ordered) - len(bad)} of {len(ordered)} runs finished with a selected variant, "
        f"{sum(o.reused for o in ordered)} reused)")
    return (EXIT_RUN_FAILED if bad else 0), ordered


# ---------------------------------------------------------------------------------------------
# the sweep report


def write_sweep_report(sweep: Sweep, outcomes: Sequence[RunOutcome], *, jobs: int, seconds: float) -> dict[str, Path]:
    entries = [
        load_entry(o.run_dir, label=o.label, settings=o.settings)
        for o in outcomes if o.status in ("ok", "no selection") and (Path(o.run_dir) / "report.json").is_file()
    ]
    comparison = build_comparison(entries)
    plot = plot_cross_run(comparison, sweep.folder / CROSS_PLOT_RELPATH, f"{sweep.spec.name}: accuracy vs p50 latency across runs")
    data = {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "kind": "sweep",
        "name": sweep.spec.name,
        "description": sweep.spec.description,
        "sweep_file": str(sweep.path),
        "base": sweep.base_source,
        "common_overrides": sweep.common,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "runs": [asdict(o) for o in outcomes],
        "comparison": comparison,
    }
    json_path = write_json(sweep.folder / "sweep.json", data)
    md_path = write_text(sweep.folder / "sweep.md", render_sweep_markdown(sweep, outcomes, entries, comparison, jobs=jobs, seconds=seconds))
    return {"json": json_path, "markdown": md_path, "plot": plot}


def render_sweep_markdown(sweep: Sweep, outcomes: Sequence[RunOutcome], entries: Sequence[Any], comparison: dict[str, Any], *, jobs: int, seconds: float) -> str:
    n_ok = sum(o.status == "ok" for o in outcomes)
    failed = [o for o in outcomes if o.status != "ok"]
    lines = [f"# Sweep: {sweep.spec.name}", ""]
    if sweep.spec.description:
        lines += [sweep.spec.description, ""]
    lines += [
        f"Sweep file `{sweep.path}`, base recipe {sweep.base_source}"
        + (f", every run with `--set {' '.join(sweep.common)}`" if sweep.common else "")
        + f". {len(outcomes)} runs: {n_ok} finished with a selected variant, {len(failed)} did not, "
        f"{sum(o.reused for o in outcomes)} reused from earlier invocations; this invocation took {seconds:.0f} s with --jobs {jobs}.",
        "",
    ]
    parallel = [o.label for o in outcomes if (o.concurrent_runs or 1) > 1]
    if parallel:
        lines += [f"**{', '.join(parallel)} ran {jobs} at a time**: their latencies were measured while other runs used the same cores "
                  "and are not comparable (below).", ""]
    rows = [[o.label, o.settings, o.status + (" (reused)" if o.reused else ""), o.best_variant or DASH, f"{o.seconds:.0f}" if not o.reused else DASH, f"`{o.run_dir}`"]
            for o in outcomes]
    lines += ["## Sweep runs", "", *markdown_table(["Run", "Overrides (--set)", "Status", "Selected", "Time (s)", "Run folder"], rows), ""]
    lines += render_comparison(entries, comparison, plot_relpath=CROSS_PLOT_RELPATH)
    lines += ["## Failed runs", ""]
    lines += failure_lines([(o.label, o.error or "") for o in failed]) if failed else ["None.", ""]
    dirs = " ".join(str(o.run_dir) for o in outcomes if o.status == "ok")
    lines += [
        "## Reproduce",
        "",
        f"- `quantize sweep {sweep.path}`: runs what is missing, reuses every finished run (exit 3 while a run fails).",
        f"- `quantize compare {dirs}`: these tables from the runs' report.json files" if dirs else "- `quantize compare RUN_DIR...`: these tables from finished runs",
        f"- `quantize compare --retime {dirs}`: the selected graphs and floats re-timed in one interleaved loop" if dirs else "",
        "",
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
