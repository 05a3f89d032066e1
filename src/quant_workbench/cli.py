"""`quantize RECIPE.yaml [--set key.path=value ...] [--dry-run] [--debug]`.

Exit codes: 0 success, 2 user error (bad recipe, missing file, impossible request), 1 internal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Sequence

from .errors import WorkbenchError


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
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _paragraph(prefix: str, text: str) -> str:
    return textwrap.fill(f"{prefix}{text}", width=100, break_long_words=False, break_on_hyphens=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Bundled models and data are local; never let a missing file turn into a silent Hub download attempt.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from .recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        if args.dry_run:
            from .run import dry_run

            dry_run(recipe)
            return 0
        from .run import execute

        execute(recipe, run_id=args.run_id, progress=not args.no_progress)
        return 0
    except WorkbenchError as exc:
        if args.debug:
            traceback.print_exc()
        print(_paragraph("error: ", str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept; run the same command again to resume.", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
