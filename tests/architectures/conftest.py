"""Tiny random models of every architecture, saved once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from architectures.tiny_architectures import save_tiny_architecture


@pytest.fixture(scope="session")
def tiny_architecture(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_architecture(model_type)`: the folder of a random 2-layer model of that type (saved once)."""
    saved: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in saved:
            saved[model_type] = save_tiny_architecture(model_type, tmp_path_factory.mktemp(model_type.replace("-", "_")))
        return saved[model_type]

    return get
