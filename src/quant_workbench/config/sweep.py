"""The sweep file's schema (`quantize sweep SWEEP.yaml`, docs/sweeps.md): pure pydantic, validated like a recipe
(unknown keys are errors). Expanding it into runs and running them is pipeline/sweep.py's business."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from quant_workbench.config.vocabulary import Strict
from quant_workbench.core.errors import WorkbenchError

_NAME = r"^[A-Za-z0-9_.-]+$"


class SweepError(WorkbenchError):
    """The sweep file, or one of the runs it expands to, is invalid (exit 2; nothing has run)."""


class SweepRunSpec(Strict):
    name: str = Field(pattern=_NAME, description="the run's label in the sweep report")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted recipe path -> value (YAML), as with --set")


class SweepSpec(Strict):
    name: str = Field(pattern=_NAME, description="the sweep folder's name under output_dir")
    description: str = ""
    base: str | dict[str, Any] = Field(description="recipe file (relative to the sweep file) or an inline recipe mapping")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides applied to every run, before its own")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="dotted recipe path -> the values it takes; every combination is a run")
    runs: list[SweepRunSpec] = Field(default_factory=list, description="named runs beside the grid")
    output_dir: str | None = Field(None, description="where the sweep folder goes; default: the runs' output_dir")

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError("the name is a folder name under output_dir; '.' and '..' are not allowed")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            _check_path(key)
            if not values:
                raise ValueError(f"axis '{key}' has no values; give at least one")
            dumped = [flow_value(x) for x in values]
            if len(set(dumped)) != len(dumped):
                raise ValueError(f"axis '{key}' repeats a value ({', '.join(dumped)}); each value makes one run")
        return v

    @field_validator("set")
    @classmethod
    def _paths(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            _check_path(key)
        return v

    @model_validator(mode="after")
    def _some_runs(self) -> SweepSpec:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names must not repeat ({', '.join(names)})")
        for r in self.runs:
            for key in r.set:
                _check_path(key)
        return self


def _check_path(key: str) -> None:
    if not key or any(not part for part in key.split(".")) or "=" in key:
        raise ValueError(f"'{key}' is not a dotted recipe path like model.max_seq_length")


def flow_value(value: Any) -> str:
    """A value as one line of YAML, which --set's parser (yaml.safe_load) reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("...") else text


def set_item(key: str, value: Any) -> str:
    return f"{key}={flow_value(value)}"


def _spec_error(exc: ValidationError, path: Path) -> SweepError:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "(sweep)"
        if err.get("type") == "extra_forbidden":
            allowed = SweepRunSpec.model_fields if "runs" in [str(p) for p in err.get("loc", ())] else SweepSpec.model_fields
            parts.append(f"unknown key '{where}' (allowed here: {', '.join(allowed)})")
        else:
            parts.append(f"'{where}': {err.get('msg', 'invalid').removeprefix('Value error, ')}")
    return SweepError(
        f"sweep file {path} is invalid: " + "; ".join(parts) + ".",
        "see docs/sweeps.md for the format (name, base, set, axes, runs, output_dir)",
    )


def read_yaml_mapping(path: Path, what: str, must_be: str, fix: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (the sweep file, its base recipe), or one exit-2 paragraph saying why not."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SweepError(f"{what} {path} is not valid YAML: {exc}.", "fix the YAML syntax at the line shown") from exc
    if not isinstance(data, dict):
        raise SweepError(f"{what} {path} must be {must_be}.", fix)
    return data


def read_sweep_spec(path: Path) -> SweepSpec:
    """The sweep file, read and validated (its runs' recipes are validated when the sweep is expanded)."""
    if not path.is_file():
        raise SweepError(f"sweep file '{path}' does not exist.", "pass the path of a sweep YAML file, e.g. recipes/sweeps/minilm_sweep.yaml")
    raw = read_yaml_mapping(path, "sweep file", "a mapping (name, base, axes, ...)", "see recipes/sweeps/minilm_sweep.yaml")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(exc, path) from None
    return spec
