"""SmoothQuant (Xiao et al. 2022) for INT8: move activation outliers into the weights.

For a Linear y = x W^T and per-input-channel factors s, y = (x / s) (W diag(s))^T exactly, and
s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) balances the two ranges so the per-tensor INT8
activation scale is no longer set by a few outlier channels.

Where 1/s goes (the float model must stay mathematically unchanged):

- attention output projection (`attention.output.dense`): its input is softmax(QK^T) V, which is
  linear in V's output channels, so 1/s is folded into V's weight rows and bias — a pure weight
  rewrite, no extra op ("fold into the preceding Linear").
- Q/K/V and FFN-in (`intermediate.dense`): their input is a LayerNorm output. BERT is post-LN: that
  LayerNorm output is also the residual stream (it is added back in the next `*Output` block), so
  folding 1/s into the LayerNorm's weight and bias would rescale the residual path and change the
  model (tests/quantize/test_smoothquant.py shows it). Instead the Linear gets an explicit
  per-channel input scale (`QuantLinear.smooth_scale` = 1/s, one Mul before its QuantizeLinear in
  ONNX, NVIDIA Model Optimizer's `pre_quant_scale`), shared by Q, K and V. TensorRT fuses such a
  Mul into the preceding LayerNorm kernel; the residual stream is untouched.
- FFN-out (`output.dense`, fed by GELU): smoothed only with `smoothquant.ffn_out: true`, by an explicit
  input scale (a Mul after the GELU; OpenVINO fuses it into FFN-in's kernel with the GELU). Its input holds
  the model's largest activation outliers (amax 8-25 on all-MiniLM-L6-v2, most values below 1), so it is
  where per-tensor INT8 loses most; with alpha 0.95 (NNCF's default for transformers) the fake-quant model's
  mean cosine to float went from 0.978 to 0.997 on that model; with alpha 0.5 it got worse (0.889): at a
  low alpha the GELU output's near-dead channels get large weight columns. See docs/openvino.md.

The factors need the per-channel abs max of each Linear's input; :class:`ChannelAmaxCollector`
gathers it during the ordinary calibration pass (forward pre-hooks, so the histogram statistics and
their cache format are untouched) and :func:`save_channel_amax` stores it next to the statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant_workbench.core.artifacts import atomic_path
from quant_workbench.core.comparator import Comparator, max_abs_diff, numpy_feed, torch_runner
from quant_workbench.quantize.architectures import SmoothGroup, architecture_of
from quant_workbench.quantize.architectures.base import quant_linear_at
from quant_workbench.quantize.modules import QuantLinear
from quant_workbench.quantize.quantizer import TensorQuantizer

_CHANNELS_FORMAT = "quant_workbench.channel_amax/1"
# Floors of the SmoothQuant reference implementation (act/weight ranges and the factor itself).
_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# per-channel input statistics


class ChannelAmaxCollector:
    """Per-input-channel abs max of every QuantLinear's input (last dim), via forward pre-hooks.

    Use as a context manager around the calibration forward loop; the values are the Linear's raw
    input (before any smoothing scale), which is what the smoothing factors need.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.amax: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> ChannelAmaxCollector:
        for name, mod in self.model.named_modules():
            if isinstance(mod, QuantLinear):

                def hook(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                    x = args[0].detach()
                    cur = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float().cpu()
                    prev = self.amax.get(name)
                    self.amax[name] = cur if prev is None else torch.maximum(prev, cur)

                self._hooks.append(mod.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def channel_amax_path(stats_path: Path) -> Path:
    return stats_path.with_name(stats_path.stem + ".channels.json")


def save_channel_amax(path: Path, key: str, amax: dict[str, torch.Tensor]) -> None:
    """Deterministic JSON (sorted names, exact float32 values as Python floats), written atomically."""
    doc = {
        "format": _CHANNELS_FORMAT,
        "key": key,
        "channels": {n: [float(v) for v in amax[n].tolist()] for n in sorted(amax)},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")


def load_channel_amax(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The stored per-channel amax, or None when missing, foreign or from another statistics key."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _CHANNELS_FORMAT or doc.get("key") != key:
        return None
    return {n: torch.tensor(v, dtype=torch.float32) for n, v in doc["channels"].items()}


# ---------------------------------------------------------------------------------------------
# groups and factors



def smooth_groups(model: nn.Module, ffn_out: bool = False) -> list[SmoothGroup]:
    """The smoothing groups among the quantized Linears (fold groups first), from the model's architecture."""
    return architecture_of(model).smooth_groups(model, ffn_out=ffn_out)


def smoothing_factors(act_amax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_i |W_ij|^(1-alpha) over all weights sharing the input (float64 math)."""
    w_amax = torch.stack([w.detach().abs().amax(dim=0).double() for w in weights]).amax(dim=0)
    a = act_amax.double()
    s = a.clamp(min=_EPS).pow(alpha) / w_amax.clamp(min=_EPS).pow(1.0 - alpha)
    # A channel that is always zero (or has zero weights) has nothing to balance: leave it alone.
    s = torch.where((a > 0) & (w_amax > 0), s, torch.ones_like(s))
    return s.clamp(min=_EPS).float()


@dataclass
class SmoothState:
    """What apply_smoothquant changed, so that restore() puts the float model back bit for bit."""

    alpha: float
    groups: list[SmoothGroup]
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # group's first linear -> s
    _saved: dict[str, torch.Tensor] = field(default_factory=dict)
    _scaled: list[QuantLinear] = field(default_factory=list)
    _model: nn.Module | None = None

    def restore(self) -> None:
        if self._model is None:
            return
        with torch.no_grad():
            for pname, value in self._saved.items():
                self._model.get_parameter(pname).copy_(value)
        for lin in self._scaled:
            lin.smooth_scale = None
        self._saved.clear()
        self._scaled.clear()
        self._model = None

    def summary(self) -> dict[str, Any]:
        ratios = [float(s.max() / s.min()) for s in self.factors.values()]
        return {
            "alpha": self.alpha,
            "groups": len(self.groups),
            "folded_into_linear": sum(g.how == "fold" for g in self.groups),
            "explicit_input_scales": sum(g.how == "input_scale" for g in self.groups),
            "smoothed_linears": sum(len(g.linears) for g in self.groups),
            "max_factor_spread": max(ratios, default=1.0),
        }


def apply_smoothquant(model: nn.Module, channel_amax: dict[str, torch.Tensor], alpha: float, *, ffn_out: bool = False) -> SmoothState:
    """Rewrite the prepared model in place; returns the state whose restore() undoes it."""
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    groups = smooth_groups(model, ffn_out=ffn_out)
    state = SmoothState(alpha=alpha, groups=groups, _model=model)
    try:
        with torch.no_grad():
            for g in groups:
                missing = [n for n in g.linears if n not in channel_amax]
                if missing:
                    raise KeyError(f"no per-channel input statistics for {', '.join(missing)}")
                act = torch.stack([channel_amax[n] for n in g.linears]).amax(dim=0)
                lins = [quant_linear_at(model, n) for n in g.linears]
                assert all(lin is not None for lin in lins)
                weights = [lin.weight for lin in lins if lin is not None]
                s = smoothing_factors(act, weights, alpha)
                state.factors[g.linears[0]] = s
                for n, lin in zip(g.linears, lins, strict=True):
                    assert lin is not None
                    _save(state, model, f"{n}.weight")
                    lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
                    if g.how == "input_scale":
                        prev = lin.smooth_scale
                        inv = (1.0 / s).to(lin.weight.dtype)
                        lin.smooth_scale = inv if prev is None else prev * inv
                        state._scaled.append(lin)
                if g.how == "fold":
                    assert g.fold_into is not None
                    src = quant_linear_at(model, g.fold_into)
                    assert src is not None
                    _save(state, model, f"{g.fold_into}.weight")
                    src.weight.div_(s.to(src.weight.dtype)[:, None])
                    if src.bias is not None:
                        _save(state, model, f"{g.fold_into}.bias")
                        src.bias.div_(s.to(src.bias.dtype))
    except BaseException:
        state.restore()
        raise
    return state


def checked_smoothquant(
    model: nn.Module, example: dict[str, torch.Tensor], channel_amax: dict[str, torch.Tensor], alpha: float, tolerance: float, *, ffn_out: bool = False
) -> tuple[SmoothState, dict[str, Any]]:
    """apply_smoothquant plus the check every SmoothQuant model passes before it is used (the PTQ schemes and
    the search's trials alike): in float, the rewrite must leave the outputs unchanged (max abs diff on
    `example` <= tolerance, export.float_tolerance). Returns the state (restore() undoes it) and the check."""
    runner = torch_runner(model)
    with float_mode(model):
        before = Comparator(runner, numpy_feed(example))
    state = apply_smoothquant(model, channel_amax, alpha, ffn_out=ffn_out)
    try:
        with float_mode(model):
            check = before.check(runner, max_abs_diff(tolerance))
    except BaseException:
        state.restore()
        raise
    return state, {"float_max_abs_diff": check.max_abs_diff, "tolerance": check.threshold, "passed": check.passed}


def _save(state: SmoothState, model: nn.Module, pname: str) -> None:
    if pname not in state._saved:
        state._saved[pname] = model.get_parameter(pname).detach().clone()


@contextmanager
def smoothquant_applied(model: nn.Module, channel_amax: dict[str, torch.Tensor], alpha: float, *, ffn_out: bool = False) -> Iterator[SmoothState]:
    state = apply_smoothquant(model, channel_amax, alpha, ffn_out=ffn_out)
    try:
        yield state
    finally:
        state.restore()


@contextmanager
def float_mode(model: nn.Module) -> Iterator[None]:
    """Every quantizer passes through (the model computes in float), restored on exit."""
    qs = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    saved = [q.enabled for q in qs]
    try:
        for q in qs:
            q.enabled = False
        yield
    finally:
        for q, on in zip(qs, saved, strict=True):
            q.enabled = on
