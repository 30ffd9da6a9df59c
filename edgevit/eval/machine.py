"""The CPU facts every latency figure is recorded with: OpenVINO's default precision and the speed of
int8 on a CPU follow its instruction sets, so a figure without them cannot be compared with another."""
from __future__ import annotations

import functools
import os
import platform
from typing import Any

# The extensions that decide int8 and bf16 speed (OpenVINO, ONNX Runtime), in the order they matter.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot-product instructions


@functools.lru_cache(maxsize=1)
def cpu_facts() -> dict[str, Any]:
    """``{"cpu", "cores", "isa"}``: model name, usable cores and the extensions of :data:`ISA_FLAGS`
    this CPU has (``isa`` is None where /proc/cpuinfo cannot be read, e.g. macOS)."""
    cpu, flags = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and flags is None:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "isa": None if flags is None else [f for f in ISA_FLAGS if f in flags]}


def isa_label(isa: list[str] | None) -> str:
    """``AVX2 only (no AVX-512, VNNI, BF16 or AMX)`` or ``AVX2, AVX512F, AVX512_VNNI``: for report headers."""
    if isa is None:
        return "instruction sets unknown"
    if not isa:
        return "no AVX2"
    have = ", ".join(f.upper() for f in isa)
    missing = [name for name, flags in (("AVX-512", ("avx512f",)), ("VNNI", INT8_DOT[:2]),
                                        ("BF16", ("avx512_bf16", "amx_bf16")), ("AMX", ("amx_int8", "amx_bf16")))
               if not set(flags) & set(isa)]
    return f"{have} (no {_join(missing)})" if missing else have


def missing_int8_isa(isa: list[str] | None) -> str | None:
    """Why int8 may not beat float on this CPU, or None when it has int8 dot-product instructions
    (or its instruction sets are unknown, e.g. an ARM or macOS host: nothing is claimed then)."""
    if isa is None or set(INT8_DOT) & set(isa):
        return None
    return ("this CPU has no VNNI (AVX512_VNNI / AVX_VNNI) or AMX-INT8: its int8 GEMMs multiply through "
            "16-bit intermediates and run at about float speed, so the quantize/dequantize work makes int8 "
            "slower; on a VNNI or AMX CPU int8 is usually 1.5-3x faster")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


ISA_CLASSES = ("avx2", "avx-vnni", "avx512", "avx512-vnni", "amx")


def isa_class(isa: list[str] | None) -> str:
    """The class of CPU a latency figure belongs to, by the instructions that decide int8 and bf16 speed:
    ``amx`` (AMX-INT8), ``avx512-vnni``, ``avx512`` (AVX-512 without VNNI), ``avx-vnni`` (AVX2 with
    AVX-VNNI), ``avx2``; ``unknown`` where the instruction sets cannot be read. Figures of two classes
    are never compared: int8 without VNNI is not faster than float."""
    if isa is None:
        return "unknown"
    have = set(isa)
    if "amx_int8" in have:
        return "amx"
    if "avx512f" in have:
        return "avx512-vnni" if "avx512_vnni" in have else "avx512"
    if "avx_vnni" in have:
        return "avx-vnni"
    return "avx2" if "avx2" in have else "unknown"
