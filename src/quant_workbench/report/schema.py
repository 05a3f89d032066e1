"""Check a report.json against the RunResult schema (core/results.py) and say what is wrong.

`quantize deploy RUN_DIR` reads a report written by an earlier run, possibly edited, truncated or from
another version; a garbage file must be a one-paragraph error naming the field, not a traceback.
The schema is the dataclasses themselves (their type hints), so a field added to core/results.py is checked
without touching this module.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from quant_workbench.core.errors import WorkbenchError
from quant_workbench.core.results import RunResult


class ReportError(WorkbenchError):
    """A run folder's report.json is not a valid report."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, where: str, problems: list[str]) -> None:
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            _check_value(value, real[0], where, problems)
        elif not any(_matches(value, o) for o in real):
            problems.append(f"{where} = {_short(value)} is not one of {', '.join(_type_name(o) for o in real)}")
        return
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{where} = {_short(value)}; allowed: {', '.join(map(repr, typing.get_args(tp)))}")
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # VariantResult, LatencyStats, any added later
        _check_object(value, tp, where, problems)
        return
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where} = {_short(value)} is not a list")
            return
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            _check_value(v, item, f"{where}[{i}]", problems)
        return
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where} = {_short(value)} is not an object")
        return
    if not _matches(value, tp):
        problems.append(f"{where} = {_short(value)} is not a {_type_name(tp)}")


def _matches(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a construct the checker does not know is accepted rather than refused wrongly


def _check_object(value: Any, cls: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where} is a {type(value).__name__}, not an object")
        return
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}.{name} is missing" if where else f"'{name}' is missing")
            continue
        _check_value(value[name], hints[name], f"{where}.{name}" if where else name, problems)
    unknown = sorted(set(value) - set(fields))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} in {where or 'the report'}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def report_problems(data: Any) -> list[str]:
    problems: list[str] = []
    _check_object(data, RunResult, "", problems)
    if not problems and data.get("best_variant") is not None:
        names = [v["name"] for v in data["variants"]]
        if data["best_variant"] not in names:
            problems.append(f"best_variant {data['best_variant']!r} is none of the variants ({', '.join(names)})")
    return problems


def load_report(run_dir: Path | str) -> RunResult:
    """report.json of a finished run, validated; ReportError (exit 2) naming what is wrong otherwise."""
    path = Path(run_dir) / "report.json"
    fix = "re-run the recipe that wrote this folder (same command) to rewrite report.json, or pass the right run folder"
    if not path.is_file():
        raise ReportError(
            f"'{run_dir}' is not a finished run folder (it has no report.json).",
            "pass a folder like reports/<recipe name>/<run id> written by `quantize RECIPE.yaml`",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path} is not readable JSON ({exc}).", fix) from None
    problems = report_problems(data)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ReportError(f"{path} does not match the report schema (results.RunResult): {shown}.", fix)
    return RunResult.from_dict(data)
