"""The engine protocol every backend implements (ONNX Runtime now, TensorRT optionally)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Engine(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...
