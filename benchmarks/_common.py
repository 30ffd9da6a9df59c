"""Shared by the benchmark scripts: the results file format (command, rows, checks; see the README), machine facts."""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def check(name: str, value: float, op: str, bar: float) -> dict[str, Any]:
    assert op in (">=", "<=")
    return {"name": name, "value": float(value), "op": op, "bar": bar,
            "ok": bool(value >= bar if op == ">=" else value <= bar)}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "isa": isa(), "python": platform.python_version(),
            "platform": platform.platform()}


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def isa() -> list[str]:
    """The instruction-set extensions that decide int8 and bf16 speed (OpenVINO, ONNX Runtime) on this CPU."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in ISA_FLAGS if f in flags]


def write_results(script: str, rows: list[dict[str, Any]], checks: list[dict[str, Any]], **extra: Any) -> Path:
    from edgevit.manifest import library_versions, write_json

    path = RESULTS / f"{Path(script).stem}.json"
    cmd = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(script).name}", *sys.argv[1:]])
    write_json(path, {"command": cmd, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine(), "versions": library_versions(), **extra, "rows": rows,
                      "checks": checks})
    for c in checks:
        print(f"  {'PASS' if c['ok'] else 'MISS'} {c['name']} = {c['value']:.4g} {c['op']} {c['bar']}")
    print(f"wrote {path}")
    return path
