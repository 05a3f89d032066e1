"""`quantize RECIPE.yaml [--set key.path=value ...] [--dry-run] [--debug]`, `quantize deploy RUN_DIR [--out DIR]
[--no-engines]` (Triton model repository for a finished run) and the sub-commands `sweep`,
`compare` and `report` (their work lives in pipeline/sweep.py, report/compare.py and report/html.py); `quantize --help` lists them all.

Exit codes: 0 success, 2 user error (bad recipe, missing file, impossible request, run folder in use),
3 the run finished but no quantized variant succeeded or none could be selected, 1 internal error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from quant_workbench import __version__
from quant_workbench.core.errors import Terminated, WorkbenchError

if TYPE_CHECKING:
    from quant_workbench.core.results import RunResult


# ---------------------------------------------------------------------------------------------
# `quantize sweep | compare | report`: arguments, --help with an example and exit codes, handlers

COMMANDS = ("sweep", "compare", "report")

_SWEEP_EXIT = """exit codes:
  0    every run finished with a selected variant (finished runs are reused, not redone)
  3    the sweep finished, but some run failed or selected no quantized variant (the others ran; sweep.md lists it)
  2    the sweep file, or a run it expands to, is invalid (nothing ran), or the sweep folder is in use
  1    internal error;  130  interrupted (finished runs are kept: run the same command to go on)"""

_COMPARE_EXIT = """exit codes:
  0    compared (and re-timed with --retime)
  2    a folder is not a finished run (no valid report.json), or an engine graph to re-time is missing
  1    internal error;  130  interrupted"""

_REPORT_EXIT = """exit codes:
  0    written
  2    the folder is not a finished run (no valid report.json) or a sweep folder without sweep.md
  1    internal error"""



def offline_by_default() -> None:
    """Runs are offline unless the user allows the Hub (HF_HUB_OFFLINE=0): a bare model name that is not cached
    then fails in preflight at once instead of retrying the network for half a minute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])


def set_up(debug: bool, *, quiet_transformers: bool = True) -> None:
    """Logging and the environment every command runs in: no telemetry, offline unless the user allows the Hub,
    transformers' own warnings only with --debug."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Bundled models and data are local; never let a missing file turn into a silent Hub download attempt.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if quiet_transformers and not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    offline_by_default()


def paragraph(prefix: str, text: str) -> str:
    return textwrap.fill(f"{prefix}{text}", width=100, break_long_words=False, break_on_hyphens=False)


def user_error(exc: WorkbenchError, debug: bool) -> int:
    """One paragraph on stderr (the traceback only with --debug); exit code 2 for a user mistake, 1 for an
    internal error reported the same way (ExportError: an exporter bug)."""
    if debug:
        traceback.print_exc()
    print(paragraph("error: " if exc.exit_code == 2 else "internal error: ", str(exc)), file=sys.stderr)
    return exc.exit_code


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _command_parser(command: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of `quantize COMMAND` for sweep, compare and report, whose help is laid out alike."""
    return argparse.ArgumentParser(prog=f"quantize {command}", formatter_class=_formatter, description=description, epilog=epilog)


def _with_debug(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every command's last option."""
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def sweep_parser() -> argparse.ArgumentParser:
    p = _command_parser(
        "sweep",
        description="Run one base recipe over axes of values (models, sequence lengths, depths, calibration methods: any key "
        "--set can reach), every combination an ordinary resumable run folder, then write one comparison: sweep.md, "
        "sweep.json and plots/ in <output_dir>/<sweep name>/. Every run's recipe is validated before the first starts; "
        "a finished run is reused; a failed run is recorded and the sweep goes on. Format: docs/sweeps.md.",
        epilog="examples:\n  quantize sweep recipes/sweeps/minilm_sweep.yaml --dry-run   # list the runs and which are finished\n"
        "  quantize sweep recipes/sweeps/minilm_sweep.yaml             # run what is missing, then sweep.md\n\n" + _SWEEP_EXIT,
    )
    p.add_argument("sweep", help="path of the sweep YAML file")
    p.add_argument("--dry-run", action="store_true", help="list the expanded runs (overrides, run folder, finished or not); run nothing")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at a time, in worker processes (default 1). With N > 1 runs share the cores while they are "
                   "timed: their latencies are marked not comparable")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return _with_debug(p)


def compare_parser() -> argparse.ArgumentParser:
    p = _command_parser(
        "compare",
        description="Compare finished runs (any mix of recipes) from their report.json files: per run float vs the "
        "selected variant and the reference rows, the accuracy-latency plane, the Pareto front, a recommendation "
        "and which latencies are comparable. Prints Markdown; --out also writes compare.md, compare.json and the plot. "
        "--retime times the selected engine graphs and floats of all runs again, in one process, interleaved in a "
        "fresh random order each round.",
        epilog="examples:\n  quantize compare reports/bert_int8/8f202c3f37af reports/minilm_sweep/1a2b3c4d5e6f\n"
        "  quantize compare reports/minilm_sweep/* --retime --batch 1 32 --rounds 30 --out reports/minilm_retime\n\n" + _COMPARE_EXIT,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (reports/<recipe>/<run id>)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write compare.md, compare.json (and retime.json) and plots/ there")
    p.add_argument("--margin", type=float, default=None, metavar="FRACTION",
                   help="accuracy margin of the recommendation, e.g. 0.005 = 0.5 point (default: the runs' selection.accuracy_margin, else 0.005)")
    p.add_argument("--retime", action="store_true", help="re-time every run's float and selected engine graphs in one interleaved loop")
    p.add_argument("--batch", type=int, nargs="+", default=None, metavar="B", help="--retime batch sizes (default: those the runs measured)")
    p.add_argument("--seq", type=int, default=None, metavar="S", help="--retime sequence length for every run (default: each run's longest measured)")
    p.add_argument("--rounds", type=int, default=20, help="--retime timed rounds per batch size (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="--retime warm-up rounds (default 3)")
    p.add_argument("--threads", type=int, default=0, help="--retime intra-op threads per session; 0 = all cores (default)")
    p.add_argument("--seed", type=int, default=0, help="--retime seed of the round orders and the feeds (default 0)")
    return _with_debug(p)


def report_parser() -> argparse.ArgumentParser:
    p = _command_parser(
        "report",
        description="Re-render a finished run's report.md and plot from its report.json (after an upgrade, or after "
        "editing nothing but wanting the current layout). --format html also writes report.html: one standalone page "
        "(inline CSS, plots embedded) that opens in a browser without network. On a sweep folder, --format html turns "
        "sweep.md into sweep.html.",
        epilog="examples:\n  quantize report reports/bert_int8/8f202c3f37af\n"
        "  quantize report reports/bert_int8/8f202c3f37af --format html   # then open report.html\n\n" + _REPORT_EXIT,
    )
    p.add_argument("run_dir", help="run folder holding report.json (or a sweep folder holding sweep.md)")
    p.add_argument("--format", choices=["md", "html"], default="md", help="md: report.md + plot (default); html: also report.html")
    return _with_debug(p)


def _sweep(args: argparse.Namespace) -> int:
    from quant_workbench.pipeline.sweep import dry_run as sweep_dry_run
    from quant_workbench.pipeline.sweep import load_sweep, run_sweep

    if args.jobs < 1:
        raise WorkbenchError(f"--jobs {args.jobs} is not a number of runs at a time.", "use --jobs 1 (the default) or more")
    sweep = load_sweep(args.sweep)
    if args.dry_run:
        sweep_dry_run(sweep)
        return 0
    code, outcomes = run_sweep(sweep, jobs=args.jobs, progress=not args.no_progress)
    bad = [o for o in outcomes if o.status != "ok"]
    if bad:
        detail = "; ".join(f"{o.label}: {(o.error or o.status).splitlines()[0][:200]}" for o in bad)
        print(paragraph("error: ", f"{len(bad)} of {len(outcomes)} runs of the sweep did not finish with a selected variant ({detail}). "
                         "The sweep report is written; run the same command again to retry them (finished runs are reused)."), file=sys.stderr)
    return code


def _compare(args: argparse.Namespace) -> int:
    from quant_workbench.core.artifacts import write_json, write_text
    from quant_workbench.report.compare import (
        CROSS_PLOT_RELPATH,
        build_comparison,
        load_entries,
        plot_cross_run,
        render_compare_markdown,
        render_retime,
        retime,
    )

    entries = load_entries(args.run_dirs)
    comparison = build_comparison(entries, args.margin)
    out = Path(args.out) if args.out else None
    text = render_compare_markdown(entries, comparison, plot_relpath=CROSS_PLOT_RELPATH if out else None)
    print(text)
    if args.retime:
        data = retime(entries, batch_sizes=args.batch, seq_length=args.seq, rounds=args.rounds, warmup=args.warmup,
                      threads=args.threads, seed=args.seed, say=lambda s: print(s, file=sys.stderr))
        section = "\n".join(render_retime(data)) + "\n"
        print(section)
        text += "\n" + section
        if out:
            write_json(out / "retime.json", data)
    if out:
        write_json(out / "compare.json", comparison)
        plot_cross_run(comparison, out / CROSS_PLOT_RELPATH, "accuracy vs p50 latency across runs")
        write_text(out / "compare.md", text)
        print(f"written: {out / 'compare.md'}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from quant_workbench.report.html import write_html
    from quant_workbench.report.markdown import write_report
    from quant_workbench.report.schema import ReportError, load_report

    folder = Path(args.run_dir)
    if not (folder / "report.json").is_file() and (folder / "sweep.md").is_file():
        if args.format != "html":
            raise ReportError(f"'{folder}' is a sweep folder: its sweep.md is rewritten by `quantize sweep`.",
                              "re-run the sweep (finished runs are reused), or pass --format html to turn sweep.md into sweep.html")
        print(f"written: {write_html(folder / 'sweep.md')}")
        return 0
    result = load_report(folder)  # names what is wrong with a missing or damaged report.json (exit 2)
    paths = write_report(result, folder)
    print(f"written: {paths['markdown']}, {paths['plot']}")
    if args.format == "html":
        print(f"written: {write_html(paths['markdown'])}")
    return 0


HANDLERS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "sweep": (sweep_parser, _sweep),
    "compare": (compare_parser, _compare),
    "report": (report_parser, _report),
}


def command_main(command: str, argv: Sequence[str]) -> int:
    make_parser, handler = HANDLERS[command]
    args = make_parser().parse_args(list(argv))
    set_up(args.debug)
    try:
        return handler(args)
    except WorkbenchError as exc:
        return user_error(exc, args.debug)
    except KeyboardInterrupt:
        print("interrupted: finished runs and artifacts are kept; run the same command again to go on.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantize",
        usage="quantize RECIPE.yaml [options]\n       quantize {deploy,sweep,compare,report} ... (quantize COMMAND --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize a Hugging Face encoder as a YAML recipe says: calibrate, export Q/DQ ONNX,\n"
        "score accuracy and latency against float, and report.",
        epilog=COMMANDS_HELP,
    )
    p.add_argument("--version", action="version", version=f"quantize (quant-workbench) {__version__}")
    p.add_argument("recipe", help="path of the YAML recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a recipe field (repeatable); VALUE is YAML")
    p.add_argument("--dry-run", action="store_true", help="print the resolved recipe and every quantizer (enabled or not, and why); run nothing")
    p.add_argument("--run-id", default=None, help="run folder name under reports/<recipe>/ (default: the recipe hash, so a re-run resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--storage", default=None, metavar="URL", help="search: Optuna storage shared by several workers, e.g. postgresql://user@host/db (default: SQLite in the run folder)")
    p.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS", help="when another run holds the run folder, wait up to SECONDS for it (default: exit 2 at once)")
    return _with_debug(p)


EXIT_NO_QUANTIZED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process killed by SIGTERM


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`, a container stopping) unwinds the run like Ctrl-C: the run's clean-up
    runs (a fresh run folder holding only .lock and the resolved recipe is removed) and a message says
    what was kept, instead of dying silently mid-stage."""

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread (a library caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: KeyboardInterrupt) -> int:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    print(f"{what}: finished artifacts are kept; run the same command again to resume.", file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED

COMMANDS_HELP = """commands:
  RECIPE.yaml  run one recipe (the default): calibrate, export, score, select, report into reports/<name>/<run id>/
  deploy       write a Triton model repository for a finished run
  sweep        run a base recipe over axes of values (models, lengths, depths, methods) and compare the runs
  compare      compare finished runs side by side from their report.json; --retime times them in one loop
  report       re-render a finished run's report.md and plot from report.json; --format html: one standalone page
`quantize COMMAND --help` shows each command's options and an example.

example: quantize recipes/bert_int8.yaml --set quantization.calibration.methods=[entropy]

exit codes:
  0    success
  2    a user mistake (bad recipe, missing file, impossible request) or the run folder is in use
  3    the run finished and wrote its report, but no quantized variant succeeded or none could be selected
       (sweep: some run failed or selected nothing)
  1    internal error;  130  interrupted (finished artifacts are kept: the same command resumes)"""


def _no_quantized_result(result: RunResult) -> str | None:
    """The summary line of a run with nothing to ship (exit 3), or None when a quantized variant was selected."""
    if result.best_variant is not None:
        return None
    from quant_workbench.core.results import FLOAT_PRECISIONS

    failed = [v for v in result.variants if v.precision not in FLOAT_PRECISIONS and v.status != "ok"]
    if failed:
        detail = "; ".join(f"{v.name}: {(v.error or 'failed').splitlines()[0]}" for v in failed)
        return f"no quantized variant succeeded ({len(failed)} failed: {detail})."
    return "no quantized variant could be selected (none was scored)."


def _deploy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantize deploy",
        description="Write a Triton model repository for a finished run: the selected variant and float "
        "(or the recipe's deploy.variants), a tokenizer model and text-in ensembles; every config.pbtxt is "
        "validated against Triton's schema and the ONNX model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: quantize deploy reports/bert_int8/8f202c3f37af --out /models/bert\n\n"
        "exit codes: 0 written; 2 not a finished run, a damaged report.json or an impossible request; 1 internal error",
    )
    p.add_argument("run_dir", help="run folder (reports/<recipe>/<run id>) holding report.json")
    p.add_argument("--out", default=None, help="repository folder (default: the recipe's deploy.output_dir, RUN_DIR/triton)")
    p.add_argument("--no-engines", action="store_true", help="write tensorrt_plan configs without building engines (build them on the serving GPU later)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME", help="variants to package ('best' = the run's selected variant; default: the recipe's deploy.variants, best and float)")
    return _with_debug(p)


def _deploy(argv: Sequence[str]) -> int:
    args = _deploy_parser().parse_args(argv)
    set_up(args.debug, quiet_transformers=False)
    try:
        from quant_workbench.deploy import deploy_run

        with _terminate_like_interrupt():
            deploy_run(args.run_dir, args.out, build_engines=not args.no_engines, variants=args.variants)
        return 0
    except WorkbenchError as exc:
        return user_error(exc, args.debug)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deploy"]:  # sub-command; otherwise the first positional is the recipe
        return _deploy(argv[1:])
    if argv[:1] and argv[0] in ("sweep", "compare", "report"):  # sub-commands below
        return command_main(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    set_up(args.debug)
    try:
        if not (math.isfinite(args.wait_lock) and args.wait_lock >= 0):
            raise WorkbenchError(
                f"--wait-lock {args.wait_lock:g} is not a number of seconds to wait: it must be 0 (do not wait) or more.",
                "pass --wait-lock 600 to wait up to ten minutes for another run holding the run folder, or leave it out",
            )
        from quant_workbench.config.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        if args.storage:  # search workers sharing one study (issue 4)
            if recipe.search is None:
                raise WorkbenchError("--storage is for recipes with a search section; this recipe has none.", "add a search: section or drop --storage")
            recipe = load_recipe(args.recipe, [*args.overrides, f"search.storage={args.storage}"])
        if args.dry_run:
            from quant_workbench.pipeline.run import dry_run

            dry_run(recipe, run_id=args.run_id)
            return 0
        from quant_workbench.pipeline.run import execute

        with _terminate_like_interrupt():
            result = execute(recipe, run_id=args.run_id, progress=not args.no_progress, wait_lock_s=args.wait_lock)
        warning = result.selection.get("warning")
        if warning and result.best_variant is not None:  # undetermined / none within the margin: still exit 0
            print(paragraph("warning: ", str(warning)), file=sys.stderr)
        summary = _no_quantized_result(result)
        if summary is not None:
            print(paragraph("error: ", f"{summary} The report is written; nothing quantized can be deployed."), file=sys.stderr)
            return EXIT_NO_QUANTIZED
        return 0
    except WorkbenchError as exc:
        return user_error(exc, args.debug)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
