"""tegrastats and trtexec logs -> power, temperatures and energy per image over the benchmark window.

Standard library only (the board may have no numpy); summarize.py imports it from beside itself.

tegrastats (JetPack 5/6) prefixes each line with a local time stamp in whole seconds,
``MM-DD-YYYY HH:MM:SS``; older releases print none. Power rails are ``NAME instant/average``, in mW
with a unit on Orin and Xavier (``VDD_IN 5123mW/5100mW``) and without one on Nano/TX1
(``POM_5V_IN 2345/2345``). The instantaneous value (before the ``/``) is used: the average is over
tegrastats' whole lifetime, which includes the engine load and the warm-up.
"""
from __future__ import annotations

import math
import re
import time

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power: Orin NX/Nano, Xavier NX, TX2 / Nano, TX1
NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
FAKE_TEMPS = {"PMIC"}  # a fixed 100C placeholder on Nano/TX boards, not a measurement
MIN_SAMPLES = 10  # fewer power samples than this in the window: the energy figure is flagged
RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
TEMP_RE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
GPU_RE = re.compile(r"\bGR3D_FREQ\s+(\d+)%")
STAMP_RE = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
THROUGHPUT_RE = re.compile(r"\bThroughput:\s*([0-9.eE+-]+)\s*qps\b")
WALLTIME_RE = re.compile(r"\bTotal Host Walltime:\s*([0-9.eE+-]+)\s*s\b")


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


def read_samples(path: str | None, notes: list[str]) -> list[dict]:
    """Every tegrastats sample in the log ([] with a note when there is no log or nothing in it)."""
    if not path:
        notes.append("no tegrastats log: power, energy, GPU load and temperatures are null")
        return []
    try:
        with open(path, errors="replace") as f:
            samples = [s for s in map(parse_tegrastats_line, f) if s]
    except FileNotFoundError:
        notes.append(f"no tegrastats log at {path}: power, energy, GPU load and temperatures are null")
        return []
    if not samples:
        notes.append(f"{path} holds no tegrastats samples: power, energy, GPU load and temperatures are null")
    return samples


def in_window(samples: list[dict], lo: float, hi: float, warnings: list[str]) -> tuple[list[dict], str]:
    """The samples taken inside [lo, hi] (epoch seconds), and how they were chosen.

    A line stamped S (whole seconds) was sampled somewhere in [S, S + 1): only seconds wholly
    inside the window are kept. When none is (a window under two seconds), the seconds that
    overlap it are kept, and said in ``warnings``; with no stamps at all, every sample is used."""
    if not samples:
        return [], "none"
    if any(s["time"] is None for s in samples):
        warnings.append("tegrastats lines carry no time stamps: every sample is used, including the engine "
                        "load and the warm-up (JetPack 5 or newer stamps its lines)")
        return samples, "all samples (no time stamps)"
    whole = all(s["time"] == int(s["time"]) for s in samples)
    res = 1.0 if whole else 0.0
    inside = [s for s in samples if lo <= s["time"] and s["time"] + res <= hi]
    if inside:
        return inside, "whole seconds inside the window" if whole else "inside the window"
    overlap = [s for s in samples if math.floor(lo) <= s["time"] <= hi]
    if overlap:
        warnings.append(f"the benchmark window ({hi - lo:.2f} s) holds no whole second of tegrastats samples: "
                        "the seconds overlapping it are used; benchmark longer (--duration)")
        return overlap, "seconds overlapping the window"
    warnings.append("no tegrastats sample falls inside the benchmark window: power and energy are null "
                    "(was tegrastats running? is the clock of the board right?)")
    return [], "none in the window"


def power_stats(samples: list[dict]) -> dict:
    out = {"power_w_mean": None, "power_w_max": None, "power_rail": None, "gpu_util_pct_mean": None,
           "temp_c_max": None, "temps_c_max": {}, "tegrastats_samples": len(samples)}
    if not samples:
        return out
    rails = sorted({r for s in samples for r in s["rails_mw"]})
    total = next((r for r in INPUT_RAILS if r in rails), None)
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


# ---------------------------------------------------------------- trtexec's own summary
def read_bench_log(path: str | None) -> dict:
    """trtexec's ``Throughput: X qps`` and ``Total Host Walltime: Y s`` (the measured part only; {} if absent)."""
    if not path:
        return {}
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for key, rx in (("throughput_qps", THROUGHPUT_RE), ("walltime_s", WALLTIME_RE)):
        m = rx.findall(text)
        try:
            v = float(m[-1]) if m else None
        except ValueError:
            v = None
        if v is not None and math.isfinite(v) and v > 0:
            out[key] = v
    return out


def measured_part(bench: dict, queries: int, span_ms: float | None) -> tuple[float | None, int, str]:
    """(seconds, queries, source) of the measured inferences: trtexec's summary, else the --exportTimes list."""
    if "throughput_qps" in bench and "walltime_s" in bench:
        return bench["walltime_s"], round(bench["throughput_qps"] * bench["walltime_s"]), "trtexec summary"
    return (span_ms / 1000.0 if span_ms else None), queries, "exportTimes"


def window_and_energy(samples: list[dict], window: list[float] | None, warmup_ms: float, measured: tuple,
                      batch: int, warnings: list[str]) -> dict:
    """Power over the measured part of the benchmark window, and energy per image from it.

    The window is [start, end] around trtexec (epoch seconds). Its measured part ends at ``end`` and
    lasts trtexec's own wall time (else it starts after the warm-up). Energy per image (mJ) is the mean
    input power (mW) over the samples in it x its seconds / images (queries x batch)."""
    seconds, queries, source = measured
    rec: dict = {"power_window": None}
    chosen = samples
    if window and samples:
        start, end = window
        lo = max(start + warmup_ms / 1000.0, end - seconds) if seconds else start + warmup_ms / 1000.0
        chosen, how = in_window(samples, lo, end, warnings)
        rec["power_window"] = {"start": start, "end": end, "measured_from": lo, "seconds": end - lo,
                               "samples": len(chosen), "selection": how}
    elif samples:
        warnings.append("no benchmark window given: every tegrastats sample is used")
    power = power_stats(chosen)
    images = queries * batch
    energy = None
    if power["power_w_mean"] is not None and seconds and images:
        energy = power["power_w_mean"] * 1000.0 * seconds / images
        if power["power_rail"] not in INPUT_RAILS:
            warnings.append(f"no input rail (VDD_IN, POM_5V_IN) on this board: energy is from the "
                            f"{power['power_rail']}, which leaves out the carrier board and regulators")
    n = len(chosen)
    if samples and n < MIN_SAMPLES:
        warnings.append(f"only {n} tegrastats power sample(s) in the benchmark window (fewer than {MIN_SAMPLES}): "
                        "power and energy per image are rough; benchmark longer (--duration)")
    return {**power, **rec, "energy_mj_per_image": energy,
            "energy_rail": power["power_rail"] if energy is not None else None, "energy_power_samples": n,
            "energy_seconds": seconds, "energy_images": images, "energy_source": source}
