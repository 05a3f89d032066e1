"""Layer selection: `targets` / `ignore` entries -> a QuantPlan (one row per quantizer, with reasons).

An entry is one of
- an exact module name (`encoder.layer.3`): matches that module and everything inside it;
- a class name (`BertIntermediate`, `Linear`): matches modules of that class and everything inside them;
- `re:<regex>`: full-matches module names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass

from torch import nn

from quant_workbench.config.catalog import SCHEMES
from quant_workbench.config.recipe import QuantSpec
from quant_workbench.core.errors import SelectionError
from quant_workbench.quantize.architectures import Feature, architecture_of
from quant_workbench.quantize.architectures.base import PointKind


@dataclass(frozen=True)
class QuantPoint:
    """A quantizable op: its module name, kind, and whether the plan quantizes it."""

    module: str
    kind: PointKind
    op_class: str
    enabled: bool
    reason: str
    # op-kind group of the search (attention-qkv, ffn-in...), named by the model's architecture
    role: str | None = None

    @property
    def quantizer_names(self) -> list[str]:
        if self.kind == "linear":
            return [f"{self.module}.input_quantizer", f"{self.module}.weight_quantizer"]
        return [f"{self.module}.input_quantizer", f"{self.module}.other_quantizer"]


@dataclass(frozen=True)
class QuantPlan:
    points: tuple[QuantPoint, ...]

    @property
    def enabled(self) -> list[QuantPoint]:
        return [p for p in self.points if p.enabled]

    def layout(self) -> list[str]:
        """Every candidate activation point, enabled or not: the calibration cache key depends only on this."""
        return [f"{p.kind}:{p.module}" for p in self.points]

    def to_rows(self) -> list[dict[str, object]]:
        # quant_plan.json keeps its schema: the role is derived from the architecture on every load.
        return [{k: v for k, v in asdict(p).items() if k != "role"} for p in self.points]

    def describe(self) -> str:
        width = max((len(n) for p in self.points for n in p.quantizer_names), default=20)
        lines = []
        for p in self.points:
            for qn in p.quantizer_names:
                mark = "INT8 " if p.enabled else "float"
                lines.append(f"  {mark}  {qn:<{width}}  {p.reason}")
        n_on = len(self.enabled)
        lines.append(f"  -> {n_on} of {len(self.points)} quantizable ops quantized ({2 * n_on} quantizers enabled)")
        return "\n".join(lines)


def _module_classes(model: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules() if name}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def entry_matches(entry: str, name: str, classes: dict[str, str]) -> bool:
    if entry.startswith("re:"):
        return re.fullmatch(entry[3:], name) is not None
    return any(a == entry or classes.get(a) == entry for a in _ancestors(name))


def candidate_points(model: nn.Module) -> list[tuple[str, PointKind, str]]:
    """Every op the workbench knows how to quantize, in module order (the architecture decides)."""
    return architecture_of(model).candidate_points(model)


def wanted_features(spec: QuantSpec) -> list[Feature]:
    wanted: list[Feature] = []
    if spec.quantize_attention_matmuls:
        wanted.append("attention_matmuls")
    if spec.quantize_residual_adds:
        wanted.append("residual_adds")
    if any(SCHEMES.get(name).smoothquant for name in spec.schemes):
        wanted.append("smoothquant")
    return wanted


def _closest(entry: str, names: list[str], classes: set[str]) -> str:
    probe = entry[3:] if entry.startswith("re:") else entry
    close = difflib.get_close_matches(probe, names + sorted(classes), n=5, cutoff=0.4)
    if not close:
        close = names[:5]
    return ", ".join(close)


def _examples(names: list[str]) -> str:
    """A few quantizable op names to copy into targets/ignore (a dry run fails here too, so it cannot list them)."""
    if not names:
        return "this model has no quantizable op"
    shown = ", ".join(names[:3])
    return f"quantizable ops are named like {shown}{' ...' if len(names) > 3 else ''} ({len(names)} in all)"


def build_plan(model: nn.Module, spec: QuantSpec) -> QuantPlan:
    arch = architecture_of(model)
    arch.check_features(wanted_features(spec))
    classes = _module_classes(model)
    candidates = arch.candidate_points(model)
    all_names = list(classes) + [c[0] for c in candidates if c[0] not in classes]
    # Linears first: the names users target most
    candidate_names = [c[0] for c in candidates if c[1] == "linear"] + [c[0] for c in candidates if c[1] != "linear"]
    excluded = re.compile(arch.excluded_pattern) if arch.excluded_pattern else None
    for field_name, entries in (("targets", spec.targets), ("ignore", spec.ignore)):
        for entry in entries:
            matched = [n for n in all_names if entry_matches(entry, n, classes)]
            if not matched:
                raise SelectionError(
                    f"quantization.{field_name} entry '{entry}' matches no module of the model.",
                    f"closest module or class names: {_closest(entry, all_names, set(classes.values()))}. "
                    "Entries are exact module names, class names, or 're:<regex>' full-matched against names; "
                    f"{_examples(candidate_names)}.",
                )
            if excluded is not None and all(excluded.search(n) for n in matched) and not any(entry_matches(entry, c, classes) for c in candidate_names):
                blocks = arch.blocks(model)
                raise SelectionError(
                    f"quantization.{field_name} entry '{entry}' names modules that never run as such in this {arch.name} model, "
                    f"so it would {'quantize' if field_name == 'targets' else 'keep float'} nothing.",
                    (arch.excluded_hint or "name the modules that run instead").format(first=blocks[0] if blocks else "?", last=blocks[-1] if blocks else "?"),
                )
    points = []
    for name, kind, op_class in candidates:
        target = next((t for t in spec.targets if entry_matches(t, name, classes)), None)
        ignored = next((i for i in spec.ignore if entry_matches(i, name, classes)), None)
        if kind == "attention_matmul" and not spec.quantize_attention_matmuls:
            enabled, reason = False, "attention matmuls kept float (quantization.quantize_attention_matmuls=false)"
        elif kind == "residual_add" and not spec.quantize_residual_adds:
            enabled, reason = False, "residual adds kept float (quantization.quantize_residual_adds=false)"
        elif ignored is not None:
            enabled, reason = False, f"ignored by '{ignored}'"
        elif target is None:
            enabled, reason = False, "not matched by any target (kept float)"
        else:
            enabled, reason = True, f"targeted by '{target}'"
        role = arch.linear_role(name) if kind == "linear" else None
        points.append(QuantPoint(name, kind, op_class, enabled, reason, role))
    if not any(p.enabled for p in points):
        raise SelectionError(
            "the layer selection quantizes nothing: every quantizable op is ignored or untargeted.",
            "widen quantization.targets (leave it out for the default, every Linear of the encoder blocks) or shorten "
            f"quantization.ignore; {_examples([p.module for p in points if p.kind == 'linear'])}",
        )
    return QuantPlan(tuple(points))
