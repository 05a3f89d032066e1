"""Names every layer shares, defined once: calibration methods, the number format, strict specs.

Imports only pydantic and the catalog (static data, config/catalog.py), so the quantizers, the recipe
schema and the search can all use it without importing each other or any implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict

from quant_workbench.config.catalog import CALIBRATORS
from quant_workbench.core.registry import NamesView, RegistryName

# A calibration method: a name declared in the CALIBRATORS registry (quantize/observers.py).
CalibMethod = Annotated[str, RegistryName(CALIBRATORS)]
# Every declared method in declaration order, read when used (the default of calibration.methods).
CALIB_METHODS: Sequence[str] = NamesView(CALIBRATORS)

# The quantized number format of a variant, a quantizer or a search trial (recipe key `format`).
Format = Literal["int8", "fp8"]


class Strict(BaseModel):
    """A recipe section: unknown keys are errors (a typo never falls back to a default), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# models/loading.py's EncoderWithHead holds the Hugging Face model as `hf`: the prefix of its modules'
# and weights' names (quantizers, Q/DQ nodes, initializers)
HF_PREFIX = "hf."


def format_prefix(kind: str, alpha: float | None = None) -> str:
    """A format's part of variant names (`<prefix>-<method>`): int8, int8-sq0.5 (SmoothQuant alpha 0.5), fp8."""
    return f"{kind}-sq{alpha:g}" if alpha is not None else kind


def parse_format_prefix(prefix: str) -> tuple[str, float | None]:
    """`format_prefix` read back: int8-sq0.5 -> ("int8", 0.5), fp8 -> ("fp8", None)."""
    kind, smoothed, rest = prefix.partition("-sq")
    if not smoothed:
        return kind, None
    digits = rest.split("-", 1)[0]
    try:
        return kind, float(digits)
    except ValueError:  # not a SmoothQuant prefix after all (a name that merely contains "-sq")
        return prefix, None


def format_label(kind: str, alpha: float | None = None) -> str:
    """INT8, INT8 + SmoothQuant 0.5, FP8 E4M3: what reports call a format."""
    if kind == "fp8":
        return "FP8 E4M3"
    return f"INT8 + SmoothQuant {alpha:g}" if alpha is not None else kind.upper()
