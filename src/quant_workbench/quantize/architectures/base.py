"""What the workbench knows about one encoder architecture, declared in one place.

An :class:`Architecture` names, relative to one encoder block, the Linears by role, the module the
attention function receives (where the Q·Kᵀ / probabilities·V matmul quantizers attach), the residual
adds, and from those derives the candidate quant points, the SmoothQuant groups and the search's
op-kind roles. It also knows the model's true sequence limit, the ONNX inputs the model really uses,
and which features it cannot support (an error when the recipe asks for them, never a silent no-op).

Call sites: a module that runs more than once per forward (ALBERT's shared layer, DeBERTa-v2's
query/key projections applied again to the relative-position embeddings) gets one module per call,
sharing the Parameters, added by :meth:`Architecture.add_call_sites` when the model is loaded, so each
call has its own quantizers and its own name for `targets` / `ignore`.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from quant_workbench.core.errors import ModelError, SelectionError
from quant_workbench.quantize.modules import QuantAdd, QuantLinear, attach_attention_matmuls

Feature = Literal["attention_matmuls", "residual_adds", "smoothquant"]
PointKind = Literal["linear", "attention_matmul", "residual_add"]
Role = Literal["attention-qkv", "attention-output", "ffn-in", "ffn-out"]

FEATURE_KEYS: dict[Feature, str] = {
    "attention_matmuls": "quantization.quantize_attention_matmuls: true",
    "residual_adds": "quantization.quantize_residual_adds: true",
    "smoothquant": "the int8-smoothquant scheme (quantization.smoothquant)",
}
# the recipe change that drops a feature (a dry run fails on it too, so the message says it)
FEATURE_FIXES: dict[Feature, str] = {
    "attention_matmuls": "--set quantization.quantize_attention_matmuls=false",
    "residual_adds": "--set quantization.quantize_residual_adds=false",
    "smoothquant": "remove quantization.smoothquant and int8-smoothquant from quantization.compare (and search.smoothquant_alphas)",
}


@dataclass(frozen=True)
class SmoothGroup:
    """Linears sharing one input and one set of SmoothQuant factors, and where 1/s goes."""

    linears: tuple[str, ...]
    how: Literal["input_scale", "fold"]
    fold_into: str | None = None  # "fold": the Linear whose output channels absorb 1/s

    def describe(self) -> str:
        target = f"folded into {self.fold_into}" if self.how == "fold" else "explicit input scale"
        return f"{', '.join(self.linears)} ({target})"


@dataclass(frozen=True)
class BlockLayout:
    """Module names relative to one encoder block ("" is the block itself)."""

    qkv: tuple[str, str, str]
    attention_output: str
    ffn_in: str
    ffn_out: str
    # The module the attention function is called with; None = the architecture computes attention
    # in its own forward, so the matmuls cannot be quantized.
    attention: str | None
    # (module, add attribute) of every residual add; a module with several adds lists each.
    residual_adds: tuple[tuple[str, str], ...] = ()
    # The Linear whose output channels feed attention_output through softmax(QKᵀ)V (SmoothQuant folds
    # 1/s of attention_output into it); None = no such pure-linear path.
    value: str | None = None

    def roles(self) -> dict[str, Role]:
        out: dict[str, Role] = {n: "attention-qkv" for n in self.qkv}
        out[self.attention_output] = "attention-output"
        out[self.ffn_in] = "ffn-in"
        out[self.ffn_out] = "ffn-out"
        return out


def _join(block: str, rel: str) -> str:
    return f"{block}.{rel}" if rel else block


class Architecture:
    """Base: subclasses set the class attributes and override the hooks their model needs."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # Full-matched against module names to find the encoder blocks (any prefix such as `bert.`).
    block_pattern: ClassVar[str] = r"(?:.*\.)?encoder\.layer\.\d+"
    layout: ClassVar[BlockLayout]
    default_targets: ClassVar[tuple[str, ...]] = (r"re:(.*\.)?(encoder|transformer)\.layer\.\d+\..*",)
    # Modules that are never candidates (e.g. ALBERT's shared layer, replaced by its call sites).
    excluded_pattern: ClassVar[str | None] = None
    # What to target instead of an excluded module (`{first}` / `{last}`: the first and last block names).
    excluded_hint: ClassVar[str | None] = None
    # feature -> why this architecture cannot support it
    unsupported: ClassVar[dict[Feature, str]] = {}
    # The name of call-site children whose input is a constant of the weights rather than of the model's
    # inputs (DeBERTa-v2's `<proj>.rel_embeddings`): an engine graph holding several calls of one weight
    # tells those calls from the per-token ones by that.
    constant_call_site: ClassVar[str | None] = None

    # ------------------------------------------------------------------ loading

    def sequence_limit(self, config: Any) -> int | None:
        """The longest input the position embeddings can encode."""
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if limit is not None else None

    def uses_token_type_ids(self, config: Any) -> bool:
        return True

    def add_call_sites(self, hf: nn.Module) -> None:
        """Give every extra call of a module its own module (sharing Parameters); default: none."""

    def keep_layers(self, hf: nn.Module, n: int) -> int:
        """Keep the first `n` encoder blocks (recipe `model.num_layers`: a depth-truncated model, e.g. the first 3
        of MiniLM's 6); returns how many the model had. Called after `add_call_sites`, so for a shared layer
        (ALBERT) the first `n` applications are kept. The blocks must be the items of one nn.ModuleList, which
        every model's encoder iterates; an adapter whose blocks are laid out otherwise overrides this or refuses."""
        blocks = self.blocks(hf)
        parents = {b.rpartition(".")[0] for b in blocks}
        holder_name, _, attr = next(iter(parents)).rpartition(".") if len(parents) == 1 else ("", "", "")
        holder = hf.get_submodule(holder_name) if holder_name else hf
        layers = getattr(holder, attr, None) if attr else None
        if not isinstance(layers, nn.ModuleList) or [f"{holder_name + '.' if holder_name else ''}{attr}.{i}" for i in range(len(layers))] != blocks:
            raise ModelError(
                f"model.num_layers is not supported for the {self.name} architecture: its encoder blocks "
                f"({', '.join(blocks[:3]) or 'none found'}) are not the items of one layer list the encoder runs in order.",
                "remove model.num_layers for this model",
            )
        total = len(layers)
        if n > total:
            raise ModelError(
                f"model.num_layers={n} exceeds the {total} encoder blocks of this {self.name} model.",
                f"set model.num_layers to a number from 1 to {total} (or remove it to keep them all)",
            )
        setattr(holder, attr, nn.ModuleList(list(layers)[:n]))
        # the config travels with the exported and deployed model: its layer count must describe what runs
        for module in hf.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "num_hidden_layers"):
                config.num_hidden_layers = n  # DistilBERT's config maps it to n_layers
            if isinstance(getattr(module, "n_layers", None), int):  # DistilBERT's Transformer keeps its own copy
                setattr(module, "n_layers", n)  # noqa: B010 (an int attribute of an nn.Module: mypy types it Tensor | Module)
        return total
    def is_constant_call_site(self, name: str) -> bool:
        """Whether the Linear call `name` reads a constant of the weights (see constant_call_site)."""
        return self.constant_call_site is not None and name.endswith(f".{self.constant_call_site}")

    def check_features(self, wanted: Sequence[Feature]) -> None:
        for feature in wanted:
            why = self.unsupported.get(feature)
            if why is not None:
                raise SelectionError(
                    f"{FEATURE_KEYS[feature]} is not supported for the {self.name} architecture: {why}.",
                    f"{FEATURE_FIXES[feature]} for {self.name} models",
                )

    # ------------------------------------------------------------------ structure

    def blocks(self, model: nn.Module) -> list[str]:
        pattern = re.compile(self.block_pattern)
        excluded = re.compile(self.excluded_pattern) if self.excluded_pattern else None
        return [n for n, _ in model.named_modules() if n and pattern.fullmatch(n) and not (excluded and excluded.search(n))]

    def candidate_points(self, model: nn.Module) -> list[tuple[str, PointKind, str]]:
        """Every op the workbench can quantize in this model, in module order."""
        blocks = self.blocks(model)
        lay = self.layout
        attention = set() if lay.attention is None or "attention_matmuls" in self.unsupported else {_join(b, lay.attention) for b in blocks}
        adds: dict[str, list[str]] = {}
        if "residual_adds" not in self.unsupported:
            for b in blocks:
                for rel, attr in lay.residual_adds:
                    adds.setdefault(_join(b, rel), []).append(attr)
        excluded = re.compile(self.excluded_pattern) if self.excluded_pattern else None
        out: list[tuple[str, PointKind, str]] = []
        for name, module in model.named_modules():
            if not name or (excluded is not None and excluded.search(name)):
                continue
            if isinstance(module, nn.Linear):
                out.append((name, "linear", type(module).__name__))
            elif name in attention:
                out.append((f"{name}.qk_matmul", "attention_matmul", "QuantMatMul"))
                out.append((f"{name}.pv_matmul", "attention_matmul", "QuantMatMul"))
            if name in adds:
                out += [(f"{name}.{attr}", "residual_add", "QuantAdd") for attr in adds[name]]
        return out

    def linear_role(self, name: str) -> Role | None:
        """The op-kind role of a Linear (a call site shares its module's role), or None outside the blocks."""
        core = self.block_pattern.removeprefix(r"(?:.*\.)?")
        m = re.fullmatch(rf"(?:.*\.)?{core}\.(.+)", name)
        if m is None:
            return None
        roles = self.layout.roles()
        rel = m.group(1)
        while rel and rel not in roles:
            rel = rel.rpartition(".")[0]
        return roles.get(rel)

    # ------------------------------------------------------------------ preparing

    def attach_attention_matmuls(self, attention: nn.Module) -> None:
        attach_attention_matmuls(attention)

    def attach_residual_adds(self, module: nn.Module, attrs: Sequence[str]) -> None:
        """Default: a BERT-style `*Output` block (dense -> dropout -> LayerNorm(x + residual))."""
        if tuple(attrs) != ("residual_add",):
            raise NotImplementedError(f"{self.name} must attach residual adds {list(attrs)} itself")
        module.residual_add = QuantAdd()
        # An instance-level forward keeps the original class (and its other methods) intact.
        module.forward = types.MethodType(_residual_forward, module)

    def residual_attrs(self, module_name: str, model: nn.Module) -> list[str]:
        for b in self.blocks(model):
            attrs = [attr for rel, attr in self.layout.residual_adds if _join(b, rel) == module_name]
            if attrs:
                return attrs
        return []

    # ------------------------------------------------------------------ SmoothQuant

    def smooth_groups(self, model: nn.Module, ffn_out: bool = False) -> list[SmoothGroup]:
        """Smoothing groups among the quantized Linears of every block (fold groups first); `ffn_out` adds
        FFN-out (fed by the activation function: an explicit input scale, nothing to fold into)."""
        self.check_features(["smoothquant"])  # never a silent no-op, whoever asks
        lay = self.layout
        folds: list[SmoothGroup] = []
        scaled: list[SmoothGroup] = []
        for b in self.blocks(model):
            qkv = [_join(b, r) for r in lay.qkv]
            lins = [quant_linear_at(model, n) for n in qkv]
            if all(lin is not None for lin in lins) and any(_quantized(lin) for lin in lins):
                scaled.append(SmoothGroup(tuple(qkv), "input_scale"))
            out_name = _join(b, lay.attention_output)
            if lay.value is not None and _quantized(quant_linear_at(model, out_name)) and quant_linear_at(model, _join(b, lay.value)) is not None:
                folds.append(SmoothGroup((out_name,), "fold", fold_into=_join(b, lay.value)))
            ffn_in = _join(b, lay.ffn_in)
            if _quantized(quant_linear_at(model, ffn_in)):
                scaled.append(SmoothGroup((ffn_in,), "input_scale"))
            ffn_out_name = _join(b, lay.ffn_out)
            if ffn_out and _quantized(quant_linear_at(model, ffn_out_name)):
                scaled.append(SmoothGroup((ffn_out_name,), "input_scale"))
        return folds + scaled


def _residual_forward(self: Any, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    hidden_states = self.dropout(self.dense(hidden_states))
    out: torch.Tensor = self.LayerNorm(self.residual_add(hidden_states, input_tensor))
    return out


def quant_linear_at(model: nn.Module, name: str) -> QuantLinear | None:
    """The QuantLinear named `name` in `model`, or None when there is none."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        return None
    return mod if isinstance(mod, QuantLinear) else None


def _quantized(lin: QuantLinear | None) -> bool:
    return lin is not None and lin.input_quantizer.enabled


def shared_clone(module: nn.Module) -> nn.Module:
    """A new module tree with the same Parameters (and buffers): one more call site of `module`."""
    import copy

    memo: dict[int, Any] = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)
