"""Model architectures as adapters: one module per architecture, registered by `config.model_type`.

Adding an architecture = one new file in this package defining an :class:`Architecture` subclass
decorated with `registry.register`, plus its tiny config in tests/architectures/tiny_architectures.py.
Every module of this package is imported when the package is, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil

from quant_workbench.quantize.architectures.base import (
    FEATURE_KEYS,
    Architecture,
    BlockLayout,
    Feature,
    Role,
    SmoothGroup,
    shared_clone,
)
from quant_workbench.quantize.architectures.registry import (
    architecture_for,
    architecture_of,
    register,
    supported_model_types,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "FEATURE_KEYS",
    "Architecture",
    "BlockLayout",
    "Feature",
    "Role",
    "SmoothGroup",
    "architecture_for",
    "architecture_of",
    "register",
    "shared_clone",
    "supported_model_types",
]
