"""`quantize RECIPE.yaml [--set key.path=value ...] [--dry-run] [--debug]`
and `quantize deploy RUN_DIR [--out DIR] [--no-engines]` (Triton model repository for a finished run).

Exit codes: 0 success, 2 user error (bad recipe, missing file, impossible request, run folder in use),
3 the run finished but no quantized variant succeeded or none could be selected, 1 internal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import WorkbenchError

if TYPE_CHECKING:
    from .results import RunResult


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantize",
        description="Quantize a Hugging Face encoder as a YAML recipe says: calibrate, export Q/DQ ONNX, "
        "score accuracy and latency against float, and report.",
        epilog="example: quantize recipes/bert_int8.yaml --set quantization.calibration.methods=[entropy]",
    )
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


def _no_quantized_result(result: RunResult) -> str | None:
    """The summary line of a run with nothing to ship (exit 3), or None when a quantized variant was selected."""
    if result.best_variant is not None:
        return None
    from .vocabulary import FLOAT_PRECISIONS

    failed = [v for v in result.variants if v.precision not in FLOAT_PRECISIONS and v.status != "ok"]
    if failed:
        detail = "; ".join(f"{v.name}: {(v.error or 'failed').splitlines()[0]}" for v in failed)
        return f"no quantized variant succeeded ({len(failed)} failed: {detail})."
    return "no quantized variant could be selected (none was scored)."


def _offline_by_default() -> None:
    """Runs are offline unless the user allows the Hub (HF_HUB_OFFLINE=0): a bare model name that is not cached
    then fails in preflight at once instead of retrying the network for half a minute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])


def _paragraph(prefix: str, text: str) -> str:
    return textwrap.fill(f"{prefix}{text}", width=100, break_long_words=False, break_on_hyphens=False)


def _user_error(exc: WorkbenchError, debug: bool) -> int:
    """One paragraph on stderr (the traceback only with --debug); exit code 2 for a user mistake, 1 for an
    internal error reported the same way (ExportError: an exporter bug)."""
    if debug:
        traceback.print_exc()
    print(_paragraph("error: " if exc.exit_code == 2 else "internal error: ", str(exc)), file=sys.stderr)
    return exc.exit_code


def _deploy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantize deploy",
        description="Write a Triton model repository for a finished run: the selected variant and float "
        "(or the recipe's deploy.variants), a tokenizer model and text-in ensembles; every config.pbtxt is "
        "validated against Triton's schema and the ONNX model.",
        epilog="example: quantize deploy reports/bert_int8/8f202c3f37af --out /models/bert",
    )
    p.add_argument("run_dir", help="run folder (reports/<recipe>/<run id>) holding report.json")
    p.add_argument("--out", default=None, help="repository folder (default: the recipe's deploy.output_dir, RUN_DIR/triton)")
    p.add_argument("--no-engines", action="store_true", help="write tensorrt_plan configs without building engines (build them on the serving GPU later)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _deploy(argv: Sequence[str]) -> int:
    args = _deploy_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _offline_by_default()
    try:
        from .deploy import deploy_run

        deploy_run(args.run_dir, args.out, build_engines=not args.no_engines)
        return 0
    except WorkbenchError as exc:
        return _user_error(exc, args.debug)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deploy"]:  # sub-command; otherwise the first positional is the recipe
        return _deploy(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Bundled models and data are local; never let a missing file turn into a silent Hub download attempt.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _offline_by_default()
    try:
        from .recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        if args.storage:  # search workers sharing one study (issue 4)
            if recipe.search is None:
                raise WorkbenchError("--storage is for recipes with a search section; this recipe has none.", "add a search: section or drop --storage")
            recipe = load_recipe(args.recipe, [*args.overrides, f"search.storage={args.storage}"])
        if args.dry_run:
            from .run import dry_run

            dry_run(recipe)
            return 0
        from .run import execute

        result = execute(recipe, run_id=args.run_id, progress=not args.no_progress, wait_lock_s=args.wait_lock)
        warning = result.selection.get("warning")
        if warning and result.best_variant is not None:  # undetermined / none within the margin: still exit 0
            print(_paragraph("warning: ", str(warning)), file=sys.stderr)
        summary = _no_quantized_result(result)
        if summary is not None:
            print(_paragraph("error: ", f"{summary} The report is written; nothing quantized can be deployed."), file=sys.stderr)
            return EXIT_NO_QUANTIZED
        return 0
    except WorkbenchError as exc:
        return _user_error(exc, args.debug)
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept; run the same command again to resume.", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
