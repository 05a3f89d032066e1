"""`quantize RECIPE.yaml [--set key.path=value ...] [--dry-run] [--debug]`, `quantize deploy RUN_DIR [--out DIR]
[--no-engines]` (Triton model repository for a finished run) and the sub-commands of cli.py (`sweep`,
`compare`, `report`); `quantize --help` lists them all.

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
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from quant_workbench import __version__
from quant_workbench.cli_commands import offline_by_default, paragraph, user_error
from quant_workbench.core.errors import Terminated, WorkbenchError

if TYPE_CHECKING:
    from quant_workbench.core.results import RunResult


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
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


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
    from quant_workbench.config.vocabulary import FLOAT_PRECISIONS

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
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _deploy(argv: Sequence[str]) -> int:
    args = _deploy_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    offline_by_default()
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
    if argv[:1] and argv[0] in ("sweep", "compare", "report"):  # sub-commands of cli.py
        from quant_workbench.cli_commands import main as command_main

        return command_main(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Bundled models and data are local; never let a missing file turn into a silent Hub download attempt.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    offline_by_default()
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
