"""TrtEngine's run loop without a GPU: the TensorRT context, the CUDA stream and events are stand-ins (TensorRT
cannot be installed here; the module is type-checked against tensorrt-stubs in test_tensorrt_typecheck.py).

What is checked is the engine's own logic: device buffers allocated once per input shape and bound again only
when the shape changes, CUDA events around `execute_async_v3` giving `last_compute_s` (the time the benchmark
records; the copy-inclusive wall time becomes the end-to-end line)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from quant_workbench.runtime import tensorrt as qtrt


class FakeEvent:
    """A CUDA event on a fake GPU clock that advances 2.5 ms between any two records."""

    log: list[str] = []
    clock_ms = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at: float | None = None

    def record(self, stream: Any) -> None:
        FakeEvent.log.append("record")
        self.at = FakeEvent.clock_ms
        FakeEvent.clock_ms += 2.5

    def elapsed_time(self, other: FakeEvent) -> float:
        assert self.at is not None and other.at is not None
        return other.at - self.at  # milliseconds, as torch.cuda.Event reports


class FakeContext:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: list[tuple[str, int]] = []
        self.executions: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.shapes["input_ids"][0], 4)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses.append((name, ptr))

    def execute_async_v3(self, stream: int) -> bool:
        FakeEvent.log.append("execute")
        self.executions.append(stream)
        return True


def _engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    import torch

    monkeypatch.setattr(torch.cuda, "device", lambda d: nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    FakeEvent.log = []
    eng: Any = qtrt.TrtEngine.__new__(qtrt.TrtEngine)
    eng.name, eng.plan, eng.device = "int8-max", Path("int8-max.plan"), torch.device("cpu")
    eng.input_names, eng.output_names = ["input_ids", "attention_mask"], ["embedding"]
    dtypes = {"input_ids": "INT32", "attention_mask": "INT32", "embedding": "FLOAT"}
    eng.loaded = SimpleNamespace(
        engine=SimpleNamespace(get_tensor_dtype=lambda n: SimpleNamespace(name=dtypes[n])), log=SimpleNamespace(errors=lambda: [], lines=[]),
    )
    eng.context = FakeContext()
    eng.stream = SimpleNamespace(cuda_stream=7, synchronize=lambda: FakeEvent.log.append("synchronize"))
    eng._setup_timing()
    return eng


def _feed(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((batch, seq), dtype=np.int64), "attention_mask": np.ones((batch, seq), dtype=np.int64)}


def test_buffers_are_allocated_once_per_shape_and_bound_when_the_shape_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(monkeypatch)
    out = eng.run_all(_feed(2, 8))
    assert out["embedding"].shape == (2, 4)
    assert eng.allocations == 1 and len(eng.context.addresses) == 3  # two inputs, one output
    first = dict(eng.context.addresses)
    eng.run_all(_feed(2, 8))
    eng.run_all(_feed(2, 8))
    assert eng.allocations == 1 and len(eng.context.addresses) == 3  # same shape: nothing allocated, nothing rebound
    eng.run_all(_feed(4, 16))
    assert eng.allocations == 2 and len(eng.context.addresses) == 6 and eng.context.shapes["input_ids"] == (4, 16)
    eng.run_all(_feed(2, 8))
    assert eng.allocations == 2  # back to a known shape: its buffers are reused, only bound again
    assert dict(eng.context.addresses[-3:]) == first
    assert eng.context.executions == [7] * 5  # on the engine's own stream


def test_the_compute_time_is_the_events_around_execute_only(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(monkeypatch)
    eng.run_all(_feed(1, 8))
    assert FakeEvent.log == ["record", "execute", "record", "synchronize"]
    assert eng.last_compute_s == pytest.approx(0.0025)


def test_the_input_copy_happens_into_the_bound_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(monkeypatch)
    feed = _feed(2, 3)
    feed["input_ids"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    eng.run_all(feed)
    (inputs, _), = eng._buffers.values()
    assert inputs["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert str(inputs["input_ids"].dtype) == "torch.int32"  # the engine's dtype, converted on the copy
