"""The registry of architectures, keyed by Hugging Face `config.model_type`."""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

from quant_workbench.core.errors import ModelError
from quant_workbench.quantize.architectures.base import Architecture

_BY_MODEL_TYPE: dict[str, Architecture] = {}
A = TypeVar("A", bound=type[Architecture])


def register(cls: A) -> A:
    """Class decorator: one instance serves every model of the class's `model_types`."""
    instance = cls()
    for model_type in cls.model_types:
        if model_type in _BY_MODEL_TYPE:
            raise RuntimeError(f"model_type '{model_type}' registered twice ({_BY_MODEL_TYPE[model_type].name}, {cls.name})")
        _BY_MODEL_TYPE[model_type] = instance
    return cls


def unregister(cls: type[Architecture]) -> None:
    """Remove an architecture registered at run time (an extension tried out in a test or a notebook)."""
    for model_type in cls.model_types:
        if type(_BY_MODEL_TYPE.get(model_type)) is cls:
            del _BY_MODEL_TYPE[model_type]


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def architecture_for(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    arch = _BY_MODEL_TYPE.get(str(model_type))
    if arch is None:
        raise ModelError(
            f"the model's architecture (config.model_type '{model_type}') is not one the workbench knows how to quantize.",
            f"supported model types: {', '.join(supported_model_types())}; "
            "a new one is one file in src/quant_workbench/quantize/architectures/ (docs/extending.md)",
        )
    return arch


def architecture_of(model: nn.Module) -> Architecture:
    """The architecture of a Hugging Face model, or of a module wrapping one (its first `config`)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "model_type"):
            return architecture_for(config)
    raise ModelError(f"{type(model).__name__} holds no Hugging Face model (no module with a config.model_type).")
