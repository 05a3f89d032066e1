"""Names every layer shares, defined once: calibration methods, the number format, strict specs.

Neutral ground (imports nothing of the package), so the quantize core, the recipe schema and the
search can all use it without importing each other.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

CalibMethod = Literal["max", "percentile", "entropy", "mse"]
CALIB_METHODS: tuple[CalibMethod, ...] = get_args(CalibMethod)

# The quantized number format of a variant, a quantizer or a search trial (recipe key `format`).
Format = Literal["int8", "fp8"]


class Strict(BaseModel):
    """A recipe section: unknown keys are errors (a typo never falls back to a default), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
