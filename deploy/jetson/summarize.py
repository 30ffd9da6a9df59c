#!/usr/bin/env python3
"""Sum up an edgevit TensorRT benchmark on a Jetson board as a device-results JSON (format 1).

Standard library only: the board may have no numpy. edgevit_jetson.sh calls three subcommands:

  summarize.py build-args MANIFEST           trtexec build flags, one per line (defaults when the
                                             manifest has no export.trtexec_args, said on stderr)
  summarize.py bench-shape MANIFEST BATCH    the --shapes value for the benchmark, e.g. input:1x3x224x224
  summarize.py summarize --times T ...       read trtexec's --exportTimes JSON and the tegrastats log,
                                             write the results JSON atomically (see --help)

The times file is trtexec's --exportTimes output (TensorRT 8.6/10): a list with one object per
measured inference, keys startEnqMs, endEnqMs, startH2dMs, endH2dMs, startComputeMs, endComputeMs,
startD2hMs, endD2hMs, h2dMs, computeMs, d2hMs, latencyMs (older trtexec: startInMs, endOutMs, ...).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time

FORMAT = "edgevit-device-results/1"
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-board input power (Orin NX/Nano, Xavier NX, TX2 / Nano)
NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
FAKE_TEMPS = {"PMIC"}  # a fixed 100C placeholder on Nano/TX boards, not a measurement
RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
TEMP_RE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
GPU_RE = re.compile(r"\bGR3D_FREQ\s+(\d+)%")
STAMP_RE = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")


class SummaryError(Exception):
    """A wrong or missing input: the message names the file and what is wrong with it."""


def read_json(path: str, if_missing: str, if_invalid: str):
    """The JSON in ``path``; a SummaryError naming the file and what to do when it is missing or broken."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such file {if_missing}") from None
    except (OSError, ValueError) as e:
        raise SummaryError(f"{path}: not {'valid' if isinstance(e, ValueError) else 'readable'} JSON ({e}); "
                           f"{if_invalid}") from None


# ---------------------------------------------------------------- manifest and trtexec flags
def load_manifest(path: str) -> dict:
    mf = read_json(path, "(the artifact directory must hold manifest.json)", "copy the artifact directory again")
    if not isinstance(mf, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(mf).__name__}")
    size = (mf.get("data_config") or {}).get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)):
        raise SummaryError(f"{path}: data_config.input_size must be [C, H, W], got {size!r}; "
                           "re-export the artifact with `edgevit export --target tensorrt-int8`")
    for key in ("target", "precision"):
        if not isinstance(mf.get(key), str):
            raise SummaryError(f"{path}: missing field {key!r}; is this an edgevit artifact manifest?")
    return mf


def default_build_args(input_size: list[int], max_batch: int = 8, workspace: str = "1024M") -> list[str]:
    c, h, w = input_size
    shape = lambda b: f"input:{b}x{c}x{h}x{w}"  # noqa: E731
    return ["--onnx=model.onnx", "--saveEngine=model.plan", "--stronglyTyped", f"--minShapes={shape(1)}",
            f"--optShapes={shape(1)}", f"--maxShapes={shape(max_batch)}", f"--memPoolSize=workspace:{workspace}",
            "--timingCacheFile=timing.cache"]


def build_args(mf: dict, path: str = "manifest.json") -> tuple[list[str], str | None]:
    """The manifest's export.trtexec_args (paths relative to the artifact dir), or the defaults and a note."""
    args = (mf.get("export") or {}).get("trtexec_args")
    note = None
    if args is None:
        args = default_build_args(mf["data_config"]["input_size"])
        note = (f"{path} has no export.trtexec_args: using the default build flags "
                "(max batch 8, workspace 1024M, strongly typed)")
    elif not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise SummaryError(f"{path}: export.trtexec_args must be a list of strings, got {args!r}")
    args = list(args)
    if not any(a.startswith("--onnx=") for a in args):
        args.insert(0, "--onnx=model.onnx")
    if not any(a.startswith("--saveEngine=") for a in args):
        args.append("--saveEngine=model.plan")
    return args, note


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def bench_shape(mf: dict, args: list[str], batch: int) -> str:
    """``name:BxCxHxW`` for trtexec --shapes; refuses a batch above the engine's --maxShapes."""
    c, h, w = mf["data_config"]["input_size"]
    spec = _flag(args, "maxShapes") or _flag(args, "optShapes")
    name = spec.split(",")[0].rsplit(":", 1)[0] if spec else "input"
    max_spec = _flag(args, "maxShapes")
    if max_spec:
        try:
            max_batch = int(max_spec.split(",")[0].rsplit(":", 1)[1].split("x")[0])
        except (IndexError, ValueError):
            raise SummaryError(f"--maxShapes={max_spec} in the manifest's trtexec_args is not name:BxCxHxW; "
                               "re-export the artifact") from None
        if batch > max_batch:
            raise SummaryError(f"--batch {batch} is above the engine's maximum batch {max_batch} "
                               f"(--maxShapes={max_spec}); use --batch {max_batch} or less, or re-export "
                               "with a larger maximum batch")
    return f"{name}:{batch}x{c}x{h}x{w}"


def runtime_precision(precision: str, args: list[str]) -> str:
    if "--stronglyTyped" in args:
        return precision  # the graph's own types: int8 Q/DQ or fp16, LayerNorm as typed in the ONNX
    flags = [p for p in ("int8", "fp16", "bf16", "fp8") if f"--{p}" in args]
    return "+".join(flags) or "fp32"


# ---------------------------------------------------------------- trtexec times
def percentile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile's default."""
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def load_times(path: str) -> list[dict]:
    data = read_json(path, "(trtexec did not write --exportTimes: see its log)",
                     "was trtexec interrupted? run the benchmark again")
    if not isinstance(data, list):
        raise SummaryError(f"{path}: expected trtexec's --exportTimes list of inferences, got {type(data).__name__}")
    if not data:
        raise SummaryError(f"{path}: holds no inferences: run more --iterations (the list is empty)")
    return data


def latencies(path: str, times: list[dict]) -> tuple[list[float], str]:
    first = times[0] if isinstance(times[0], dict) else {}
    key = "latencyMs" if "latencyMs" in first else "computeMs" if "computeMs" in first else None
    if key is None:
        raise SummaryError(f"{path}: inference 0 has neither 'latencyMs' nor 'computeMs' (keys: "
                           f"{sorted(first)}): is this trtexec --exportTimes output?")
    out = []
    for i, t in enumerate(times):
        v = t.get(key) if isinstance(t, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise SummaryError(f"{path}: inference {i} has no valid {key!r} (got {v!r})")
        out.append(float(v))
    return out, key


def _common_key(times: list[dict], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if all(isinstance(t.get(k), (int, float)) for t in times)), None)


def wall_span_ms(times: list[dict]) -> float | None:
    """First start to last end of the measured inferences: the span trtexec's own throughput uses."""
    start = _common_key(times, ("startH2dMs", "startInMs", "startEnqMs", "startComputeMs"))
    end = _common_key(times, ("endD2hMs", "endOutMs", "endComputeMs"))
    if not start or not end:
        return None
    span = max(t[end] for t in times) - min(t[start] for t in times)
    return span if span > 0 else None


def latency_stats(path: str, times: list[dict], batch: int) -> dict:
    lat, key = latencies(path, times)
    s = sorted(lat)
    mean = sum(s) / len(s)
    span = wall_span_ms(times)
    tput = len(s) * batch * 1000.0 / span if span else (batch * 1000.0 / mean if mean > 0 else None)
    return {"p50_ms": percentile(s, 50), "p90_ms": percentile(s, 90), "p99_ms": percentile(s, 99),
            "mean_ms": mean, "min_ms": s[0], "max_ms": s[-1], "throughput_ips": tput, "runs": len(s),
            "latency_key": key, "throughput_basis": "wall time" if span else "mean latency"}


# ---------------------------------------------------------------- tegrastats
def parse_tegrastats_line(line: str) -> dict | None:
    rails = {m.group(1): int(m.group(2)) for m in RAIL_RE.finditer(line) if m.group(1) not in NOT_RAILS}
    temps = {m.group(1): float(m.group(2)) for m in TEMP_RE.finditer(line) if float(m.group(2)) > -40}
    gpu = GPU_RE.search(line)
    if not rails and not temps and not gpu:
        return None
    stamp = STAMP_RE.match(line)
    when = time.mktime(time.strptime(stamp.group(1), "%m-%d-%Y %H:%M:%S")) if stamp else None
    return {"time": when, "rails_mw": rails, "temps_c": temps, "gpu_pct": int(gpu.group(1)) if gpu else None}


def read_tegrastats(path: str | None, window: list[float] | None, warmup_ms: float, notes: list[str]) -> list[dict]:
    if not path:
        notes.append("no tegrastats log: power, GPU load and temperatures are null")
        return []
    try:
        with open(path, errors="replace") as f:
            samples = [s for s in map(parse_tegrastats_line, f) if s]
    except FileNotFoundError:
        notes.append(f"no tegrastats log at {path}: power, GPU load and temperatures are null")
        return []
    if not samples:
        notes.append(f"{path} holds no tegrastats samples: power, GPU load and temperatures are null")
        return []
    if window:
        # a line stamped S (whole seconds) was sampled in [S, S + 1): keep those overlapping the window
        lo, hi = math.floor(window[0] + warmup_ms / 1000.0), math.floor(window[1])
        inside = [s for s in samples if s["time"] is not None and lo <= s["time"] <= hi]
        if inside:
            return inside
        notes.append("tegrastats lines carry no time stamps inside the benchmark window: all samples used")
    return samples


def power_stats(samples: list[dict]) -> dict:
    out = {"power_w_mean": None, "power_w_max": None, "power_rail": None, "gpu_util_pct_mean": None,
           "temp_c_max": None, "temps_c_max": {}, "tegrastats_samples": len(samples)}
    if not samples:
        return out
    rails = sorted({r for s in samples for r in s["rails_mw"]})
    total = next((r for r in TOTAL_RAILS if r in rails), None)
    if rails:
        watts = [(s["rails_mw"][total] if total else sum(s["rails_mw"].values())) / 1000.0
                 for s in samples if (total in s["rails_mw"] if total else s["rails_mw"])]
        out.update(power_w_mean=sum(watts) / len(watts), power_w_max=max(watts),
                   power_rail=total or "sum of " + "+".join(rails))
    gpu = [s["gpu_pct"] for s in samples if s["gpu_pct"] is not None]
    if gpu:
        out["gpu_util_pct_mean"] = sum(gpu) / len(gpu)
    temps: dict[str, float] = {}
    for s in samples:
        for k, v in s["temps_c"].items():
            temps[k] = max(v, temps.get(k, v))
    real = [v for k, v in temps.items() if k.upper() not in FAKE_TEMPS]
    out.update(temps_c_max=temps, temp_c_max=max(real) if real else None)
    return out


# ---------------------------------------------------------------- result file
def sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str, obj: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _none_if_empty(v):
    return v if v not in ("", None) else None


def device_facts(a: argparse.Namespace) -> dict:
    mode_id = int(a.power_mode_id) if a.power_mode_id not in (None, "") else None
    return {"model": _none_if_empty(a.device_model), "l4t": _none_if_empty(a.l4t),
            "jetpack": _none_if_empty(a.jetpack), "tensorrt": _none_if_empty(a.tensorrt),
            "power_mode": _none_if_empty(a.power_mode), "power_mode_id": mode_id,
            "power_mode_applied": a.power_mode_applied, "jetson_clocks": a.jetson_clocks}


def summarize(a: argparse.Namespace) -> dict:
    notes: list[str] = []
    mf = load_manifest(a.manifest)
    args, note = build_args(mf, a.manifest)
    notes += [note] if note else []
    stats = latency_stats(a.times, load_times(a.times), a.batch)
    power = power_stats(read_tegrastats(a.tegrastats, a.window, a.warmup_ms, notes))
    engine_mb = os.path.getsize(a.engine) / 2**20 if a.engine and os.path.isfile(a.engine) else None
    trt = _none_if_empty(a.tensorrt)
    row = {"name": f"{mf['target']}@jetson", "target": mf["target"], "backend": "tensorrt",
           "precision": mf["precision"], "runtime_precision": runtime_precision(mf["precision"], args),
           "runtime": f"tensorrt {trt or '?'} (trtexec)", "batch": a.batch, **stats, **power,
           "engine_build_s": a.build_s, "engine_size_mb": engine_mb, "measured_on": "device"}
    return {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": a.command, "device": device_facts(a),
            "artifact": {"target": mf["target"], "precision": mf["precision"],
                         "model": (mf.get("model") or {}).get("name"), "input_size": mf["data_config"]["input_size"],
                         "onnx_sha256": sha256(a.onnx) if a.onnx else None, "trtexec_args": args},
            "rows": [row], "notes": notes}


def _summarize_parser(sub) -> None:
    p = sub.add_parser("summarize", help="write the device-results JSON")
    p.add_argument("--manifest", required=True)
    p.add_argument("--times", required=True, help="trtexec --exportTimes JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--onnx", help="the model.onnx the engine was built from (for its sha256)")
    p.add_argument("--tegrastats", help="tegrastats --logfile output (optional)")
    p.add_argument("--engine", help="the built engine (for its size)")
    p.add_argument("--build-s", type=float)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup-ms", type=float, default=0.0)
    p.add_argument("--window", type=float, nargs=2, metavar=("START", "END"),
                   help="epoch seconds around the benchmark: tegrastats samples outside it are left out")
    for name in ("device-model", "l4t", "jetpack", "tensorrt", "power-mode", "power-mode-id", "command"):
        p.add_argument(f"--{name}", default="")
    p.add_argument("--power-mode-applied", action="store_true")
    p.add_argument("--jetson-clocks", action="store_true")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build-args", help="trtexec build flags from the manifest, one per line")
    p.add_argument("manifest")
    p = sub.add_parser("bench-shape", help="the --shapes value for the benchmark")
    p.add_argument("manifest")
    p.add_argument("batch", type=int)
    _summarize_parser(sub)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "summarize":
            result = summarize(a)
            write_atomic(a.out, result)
            for n in result["notes"]:
                print(f"summarize.py: note: {n}", file=sys.stderr)
            r = result["rows"][0]
            print(f"{r['name']}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
                  f"{r['throughput_ips']:.1f} img/s, power {_w(r['power_w_mean'])} -> {a.out}")
            return 0
        mf = load_manifest(a.manifest)
        args, note = build_args(mf, a.manifest)
        if note and a.cmd == "build-args":
            print(f"summarize.py: note: {note}", file=sys.stderr)
        print(bench_shape(mf, args, a.batch) if a.cmd == "bench-shape" else "\n".join(args))
        return 0
    except SummaryError as e:
        print(f"summarize.py: error: {e}", file=sys.stderr)
        return 2


def _w(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} W"


if __name__ == "__main__":
    sys.exit(main())
