#!/usr/bin/env python3
"""Sum up an edgevit TensorRT benchmark on a Jetson board as a device-results JSON (format 1).

Standard library only: the board may have no numpy. edgevit_jetson.sh calls four subcommands:

  summarize.py build-args MANIFEST [BATCH]   trtexec build flags, one per line (defaults when the
                                             manifest has no export.trtexec_args, said on stderr), with
                                             --skipInference and the profile's opt batch = BATCH
  summarize.py bench-shape MANIFEST BATCH    the --shapes value for the benchmark, e.g. input:1x3x224x224
  summarize.py engine-json --engine E ...    write engine.json beside the engine (see --help)
  summarize.py summarize --times T ...       read trtexec's --exportTimes JSON and output, and the tegrastats
                                             log; write the results JSON atomically (see --help)

Power, the benchmark window and energy per image are computed in jetson_power.py, beside this file.

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jetson_power import measured_part, read_bench_log, read_samples, window_and_energy  # noqa: E402

FORMAT = "edgevit-device-results/1"
BUILT_BY = "deploy/jetson/edgevit_jetson.sh"


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


def build_args(mf: dict, path: str = "manifest.json", batch: int = 1) -> tuple[list[str], list[str]]:
    """The build flags: the manifest's export.trtexec_args (paths relative to the artifact dir), or the
    defaults, with the profile fitted to ``batch`` and --skipInference; and notes on what was changed."""
    args = (mf.get("export") or {}).get("trtexec_args")
    notes = []
    if args is None:
        args = default_build_args(mf["data_config"]["input_size"])
        notes.append(f"{path} has no export.trtexec_args: using the default build flags "
                     "(max batch 8, workspace 1024M, strongly typed)")
    elif not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise SummaryError(f"{path}: export.trtexec_args must be a list of strings, got {args!r}")
    args = list(args)
    if not any(a.startswith("--onnx=") for a in args):
        args.insert(0, "--onnx=model.onnx")
    if not any(a.startswith("--saveEngine=") for a in args):
        args.append("--saveEngine=model.plan")
    if "--skipInference" not in args:  # build only: a benchmark inside the build call would be timed with it
        args.append("--skipInference")
    args, note = fit_profile(args, batch)
    return args, notes + ([note] if note else [])


SHAPE_FLAGS = ("minShapes", "optShapes", "maxShapes")


def parse_shapes(flag: str, spec: str) -> list[tuple[str, list[int]]]:
    """``name:1x3x224x224[,name2:...]`` -> [(name, [1, 3, 224, 224]), ...]."""
    out = []
    for part in spec.split(","):
        name, _, dims = part.rpartition(":")
        try:
            shape = [int(d) for d in dims.split("x")]
        except ValueError:
            shape = []
        if not name or not shape:
            raise SummaryError(f"--{flag}={spec} in the build flags is not name:BxCxHxW; re-export the artifact")
        out.append((name, shape))
    return out


def _spec(entries: list[tuple[str, list[int]]]) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in entries)


def profile_of(args: list[str]) -> dict[str, list[list[int]]] | None:
    """The optimisation profile in the build flags, {input: [min, opt, max]}; None for a static-shape build."""
    specs = {k: _flag(args, k) for k in SHAPE_FLAGS}
    given = [v for k, v in specs.items() if v]
    if not given:
        return None
    base = dict(parse_shapes("optShapes", given[0]))
    per = [dict(parse_shapes(k, v)) if v else base for k, v in specs.items()]
    return {name: [p.get(name, base[name]) for p in per] for name in base}


def fit_profile(args: list[str], batch: int) -> tuple[list[str], str | None]:
    """Make the engine's profile fit the benchmark batch: opt = ``batch``, max >= it, min <= it.

    TensorRT tunes its kernels for the opt shape, so a batch-4 benchmark of an engine tuned for batch 1
    measures the wrong kernels. Static-shape builds (no shape flags) are left as they are."""
    prof = profile_of(args)
    if prof is None:
        return args, None
    lo, opt, hi = ([[n, list(s[i])] for n, s in prof.items()] for i in range(3))
    note = None
    if batch > hi[0][1][0]:
        note = (f"--batch {batch} is above the manifest's maximum batch {hi[0][1][0]}: "
                f"the engine is built with a maximum batch of {batch}")
    for entries, pick in ((lo, min), (opt, lambda _b, new: new), (hi, max)):
        for e in entries:
            e[1][0] = pick(e[1][0], batch)
    new = [f"--minShapes={_spec(lo)}", f"--optShapes={_spec(opt)}", f"--maxShapes={_spec(hi)}"]
    # one profile replaces them all: the --profile=N flags of a several-profile build go with their shapes
    is_shape = lambda a: any(a.startswith(f"--{k}=") for k in SHAPE_FLAGS) or re.fullmatch(r"--profile=\d+", a)  # noqa: E731
    first = next(i for i, a in enumerate(args) if is_shape(a))
    return args[:first] + new + [a for a in args[first:] if not is_shape(a)], note


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def bench_shape(mf: dict, args: list[str], batch: int) -> str:
    """``name:BxCxHxW`` for trtexec --shapes (build_args has fitted the engine's profile to ``batch``)."""
    c, h, w = mf["data_config"]["input_size"]
    prof = profile_of(args)
    return f"{next(iter(prof)) if prof else 'input'}:{batch}x{c}x{h}x{w}"


def manifest_runtime_precision(mf: dict) -> str | None:
    """What the artifact says its engine computes (e.g. "int8 GEMMs + fp16"), else its precision, else None."""
    for v in (mf.get("runtime_precision"), (mf.get("export") or {}).get("runtime_precision"), mf.get("precision")):
        if isinstance(v, str) and v:
            return v
    return None


def runtime_precision(mf: dict, args: list[str]) -> str:
    if "--stronglyTyped" in args:
        return manifest_runtime_precision(mf) or "?"  # the graph's own types: int8 Q/DQ or fp16, as in the ONNX
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


def row_name(target: str, batch: int) -> str:
    return f"{target}@jetson" if batch == 1 else f"{target}@jetson-b{batch}"


def summarize(a: argparse.Namespace) -> dict:
    notes: list[str] = []
    warnings: list[str] = []
    mf = load_manifest(a.manifest)
    args, more = build_args(mf, a.manifest, a.batch)
    times = load_times(a.times)
    stats = latency_stats(a.times, times, a.batch)
    measured = measured_part(read_bench_log(a.bench_log), len(times), wall_span_ms(times))
    power = window_and_energy(read_samples(a.tegrastats, notes), a.window, a.warmup_ms, measured, a.batch, warnings)
    engine_mb = os.path.getsize(a.engine) / 2**20 if a.engine and os.path.isfile(a.engine) else None
    trt = _none_if_empty(a.tensorrt)
    row = {"name": row_name(mf["target"], a.batch), "target": mf["target"], "backend": "tensorrt",
           "precision": mf["precision"], "runtime_precision": runtime_precision(mf, args),
           "runtime": f"tensorrt {trt or '?'} (trtexec)", "batch": a.batch, "profile": profile_of(args),
           **stats, **power, "engine_build_s": a.build_s, "engine_size_mb": engine_mb, "measured_on": "device"}
    return {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": a.command, "device": device_facts(a),
            "artifact": {"target": mf["target"], "precision": mf["precision"],
                         "model": (mf.get("model") or {}).get("name"), "input_size": mf["data_config"]["input_size"],
                         "onnx_sha256": sha256(a.onnx) if a.onnx else None, "trtexec_args": args},
            "rows": [row], "notes": more + notes, "warnings": warnings}


def engine_meta(a: argparse.Namespace) -> dict:
    """engine.json beside model.plan, the facts edgevit's TensorRT loader reads when it is there."""
    mf = load_manifest(a.manifest)
    args, _ = build_args(mf, a.manifest, a.batch)
    if not os.path.isfile(a.engine):
        raise SummaryError(f"{a.engine}: no such file (trtexec wrote no engine: see build.log)")
    prof = profile_of(args)
    return {"tensorrt": _none_if_empty(a.tensorrt), "gpu": _none_if_empty(a.gpu), "built_by": BUILT_BY,
            "trtexec_args": args, "profile": prof, "input": next(iter(prof)) if prof else None,
            "engine_sha256": sha256(a.engine), "engine_bytes": os.path.getsize(a.engine), "build_s": a.build_s,
            "runtime_precision": manifest_runtime_precision(mf), "strongly_typed": "--stronglyTyped" in args,
            "onnx_sha256": sha256(a.onnx) if a.onnx else None,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _parsers(sub) -> None:
    p = sub.add_parser("build-args", help="trtexec build flags from the manifest, one per line")
    p.add_argument("manifest")
    p.add_argument("batch", type=int, nargs="?", default=1, help="the benchmark batch: the profile's opt batch")
    p = sub.add_parser("bench-shape", help="the --shapes value for the benchmark")
    p.add_argument("manifest")
    p.add_argument("batch", type=int)
    p = sub.add_parser("engine-json", help="write engine.json beside the engine trtexec built")
    for name in ("manifest", "engine", "out"):
        p.add_argument(f"--{name}", required=True)
    for name in ("onnx", "tensorrt", "gpu"):  # gpu: the board model (/proc/device-tree/model) or nvidia-smi's
        p.add_argument(f"--{name}", default="")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--build-s", type=float)
    p = sub.add_parser("summarize", help="write the device-results JSON")
    p.add_argument("--manifest", required=True)
    p.add_argument("--times", required=True, help="trtexec --exportTimes JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--onnx", help="the model.onnx the engine was built from (for its sha256)")
    p.add_argument("--tegrastats", help="tegrastats --logfile output (optional)")
    p.add_argument("--bench-log", help="trtexec's benchmark output (its Throughput and Total Host Walltime)")
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


def _report(result: dict, out: str) -> None:
    for n in result["notes"]:
        print(f"summarize.py: note: {n}", file=sys.stderr)
    for w in result["warnings"]:
        print(f"summarize.py: WARNING: {w}", file=sys.stderr)
    r = result["rows"][0]
    fmt = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731
    print(f"{r['name']}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, {r['throughput_ips']:.1f} img/s, "
          f"power {fmt(r['power_w_mean'], '{:.2f} W')} ({r['tegrastats_samples']} samples), "
          f"energy {fmt(r['energy_mj_per_image'], '{:.2f} mJ/image')} -> {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _parsers(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args(argv)
    try:
        if a.cmd in ("summarize", "engine-json"):
            result = summarize(a) if a.cmd == "summarize" else engine_meta(a)
            write_atomic(a.out, result)
            if a.cmd == "summarize":
                _report(result, a.out)
            return 0
        mf = load_manifest(a.manifest)
        args, notes = build_args(mf, a.manifest, a.batch)
        for note in notes if a.cmd == "build-args" else []:
            print(f"summarize.py: note: {note}", file=sys.stderr)
        print(bench_shape(mf, args, a.batch) if a.cmd == "bench-shape" else "\n".join(args))
        return 0
    except SummaryError as e:
        print(f"summarize.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
