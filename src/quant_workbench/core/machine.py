"""Facts about the machine that decide which graphs are fast or correct on it.

Detected, never assumed: the CPU's instruction-set flags (/proc/cpuinfo) and, where OpenVINO is
installed, what its CPU plugin says it can compute (OPTIMIZATION_CAPABILITIES). A run records both
in report.json's `hardware` (`precision_facts`), and OpenVINO rows in bf16 exist only where both agree.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

# x86 flags that give a CPU bf16 dot products (AVX512_BF16: Cooper Lake, Zen 4+; AMX-BF16: Sapphire Rapids+)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The first CPU's x86 flags from /proc/cpuinfo (None: not x86 Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else frozenset(flags)


def cpu_has_vnni() -> bool | None:
    """Whether x86 integer dot-product instructions exist (None: not x86 Linux). Without them ONNX Runtime's
    U8 x S8 kernels sum pairs of products in 16 bits and can saturate; the engine-graph check catches it."""
    flags = cpu_flags()
    if flags is None:
        return None
    return bool(set(INT8_DOT_FLAGS) & flags)


def cpu_has_bf16() -> bool | None:
    """Whether the CPU has bf16 dot-product instructions (None: flags unknown)."""
    flags = cpu_flags()
    if flags is None:
        return None
    return bool(set(BF16_FLAGS) & flags)


@functools.lru_cache(maxsize=1)
def openvino_cpu_facts() -> dict[str, Any] | None:
    """OpenVINO's CPU plugin: version, OPTIMIZATION_CAPABILITIES and its default inference precision
    (None when openvino is not installed or has no CPU device)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        core = ov.Core()
        caps = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
        name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception as exc:  # a broken install or no CPU device: recorded, not fatal here
        return {"version": getattr(ov, "__version__", "?"), "error": f"{type(exc).__name__}: {exc}"}
    return {
        "version": ov.__version__.split("-")[0],
        "device": name,
        "capabilities": caps,
        "default_inference_precision": _precision_name(default),
    }


def _precision_name(element_type: Any) -> str:
    """OpenVINO element type -> the recipe's name for it (bf16, f32, f16)."""
    text = str(getattr(element_type, "get_type_name", lambda: element_type)())
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(text, text)


def openvino_supports(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin computes in `precision` here: its capabilities list it and, for bf16,
    the CPU has the instructions (both detected)."""
    facts = openvino_cpu_facts()
    if facts is None or "capabilities" not in facts:
        return False
    if precision == "f32":
        return "FP32" in facts["capabilities"]
    if precision == "bf16":
        return "BF16" in facts["capabilities"] and cpu_has_bf16() is not False
    return False


def precision_facts() -> dict[str, Any]:
    """What report.json's `hardware` records about precisions: CPU flags that matter and OpenVINO's view."""
    out: dict[str, Any] = {}
    flags = cpu_flags()
    if flags is not None:
        out["cpu_flags"] = sorted(f for f in (*INT8_DOT_FLAGS, *BF16_FLAGS, "amx_tile", "avx512f", "avx2") if f in flags)
        out["bf16_dot_product"] = bool(set(BF16_FLAGS) & flags)
    facts = openvino_cpu_facts()
    if facts is not None:
        out["openvino"] = {**facts, "bf16": openvino_supports("bf16")}
    return out


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform()}
    vnni = cpu_has_vnni()
    if vnni is not None:
        info["int8_dot_product"] = vnni
    info.update(precision_facts())  # issue 17: bf16 instructions and OpenVINO's CPU capabilities, detected
    import torch  # lazy: the machine facts are read by commands that never load a model

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
