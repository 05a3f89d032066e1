"""Facts about the machine that decide which graphs are fast or correct on it."""

from __future__ import annotations


def cpu_has_vnni() -> bool | None:
    """Whether x86 integer dot-product instructions exist (None: not x86 Linux). Without them ONNX Runtime's
    U8 x S8 kernels sum pairs of products in 16 bits and can saturate; the engine-graph check catches it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))
