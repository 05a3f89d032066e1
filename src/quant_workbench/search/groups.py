"""Layer groups and fallback overrides.

A group is a named list of quant points (module names of the plan): one per encoder layer (`layer3`)
and one per op kind (attention-qkv, attention-output, ffn-in, ffn-out, attention-matmuls,
residual-adds). Only points the recipe's plan quantizes belong to groups; a group may fall back to
float, which is an override on top of the recipe's plan (reason `fallback: <group>`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from quant_workbench.quantize.plan import QuantPlan, QuantPoint

KIND_ORDER = ("attention-qkv", "attention-output", "ffn-in", "ffn-out", "attention-matmuls", "residual-adds")
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class LayerGroup:
    name: str  # "layer3", "ffn-out"
    kind: str  # "layer" | "kind"
    modules: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "modules": list(self.modules)}


def op_kind(point: QuantPoint) -> str | None:
    """The op-kind group of a point (its architecture's role of a Linear), or None for a Linear outside the blocks."""
    if point.kind == "attention_matmul":
        return "attention-matmuls"
    if point.kind == "residual_add":
        return "residual-adds"
    return point.role


def layer_index(module: str) -> int | None:
    m = _LAYER.search(module + ".")
    return int(m.group(1)) if m else None


def build_groups(plan: QuantPlan, kinds: Sequence[str] = ("layer", "kind")) -> list[LayerGroup]:
    """Groups over the points the plan quantizes; empty groups are dropped. Layer groups first."""
    enabled = [p for p in plan.points if p.enabled]
    out: list[LayerGroup] = []
    if "layer" in kinds:
        by_layer: dict[int, list[str]] = {}
        for p in enabled:
            idx = layer_index(p.module)
            if idx is not None:
                by_layer.setdefault(idx, []).append(p.module)
        out += [LayerGroup(f"layer{i}", "layer", tuple(mods)) for i, mods in sorted(by_layer.items())]
    if "kind" in kinds:
        by_kind: dict[str, list[str]] = {}
        for p in enabled:
            k = op_kind(p)
            if k is not None:
                by_kind.setdefault(k, []).append(p.module)
        out += [LayerGroup(k, "kind", tuple(by_kind[k])) for k in KIND_ORDER if k in by_kind]
    return out


def with_fallback(plan: QuantPlan, groups: Sequence[LayerGroup], float_groups: Iterable[str]) -> QuantPlan:
    """The recipe's plan with every module of the named groups kept float (reason `fallback: <group>`)."""
    by_name = {g.name: g for g in groups}
    reason: dict[str, str] = {}
    for name in float_groups:
        if name not in by_name:
            raise KeyError(f"unknown layer group '{name}'; known: {', '.join(by_name)}")
        for m in by_name[name].modules:
            reason.setdefault(m, f"fallback: {name}")
    points = tuple(
        replace(p, enabled=False, reason=reason[p.module]) if p.enabled and p.module in reason else p for p in plan.points
    )
    return QuantPlan(points)


def only_groups(plan: QuantPlan, groups: Sequence[LayerGroup], quantized: Iterable[str]) -> QuantPlan:
    """Quantize only the named groups: every other group falls back to float."""
    by_name = {g.name: g for g in groups}
    names = list(quantized)
    keep = {m for n in names for m in by_name[n].modules}
    why = f"fallback: only {'+'.join(names)} quantized"
    return QuantPlan(tuple(replace(p, enabled=False, reason=why) if p.enabled and p.module not in keep else p for p in plan.points))


