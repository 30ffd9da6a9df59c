"""Speed decisions on a noisy, shared CPU: the paired estimator of edgevit.eval.timing, quiet and beside a
busy loop, and the stability of the search's choice among its five fastest candidates.

1. ORT int8 / ORT fp32 (DeiT-Ti @224, batch 1, random weights: latency does not depend on them), timed
   quiet and with `python3 -c "while True: pass"` running on one core beside it. Each protocol is
   measured in both conditions, interleaved (quiet, busy, quiet, busy): edgevit's (many one-run rounds
   in random order, median of per-round ratios, paired bootstrap interval, 200 rounds and then more
   until the interval is within ±5 %, at most 800), the same run's first 200 rounds alone, the same with four-run
   rounds and each per-round figure (min, lower quartile, median, mean), and the protocol edgevit used
   before (3 rounds of 100 runs, ratio of the medians of the rounds' p50s).
2. The five fastest candidates of `edgevit optimize`'s default space for each runtime (OpenVINO and
   ONNX Runtime, float and int8; ranked in one screening pass), chosen among five times over, each
   time re-timed head to head and decided by edgevit.eval.timing.choose (the search's rule).

    python benchmarks/latency_noise.py [--rounds 200] [--repeats 5]

Artifacts come from benchmarks/runs/optimize_cpu/latency when `optimize_cpu.py` has run (the same
exports the search timed), else they are exported here into benchmarks/runs/latency_noise.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, check, write_results  # noqa: E402

RUN = ROOT / "benchmarks" / "runs" / "latency_noise"
OPT = ROOT / "benchmarks" / "runs" / "optimize_cpu" / "latency"
IMAGENET = SHARED_DATA / "imagenet-sample"
PRECISION_PCT = 5.0  # edgevit's default with --compare and in the search's head-to-head
EDGEVIT = f"edgevit: one-run rounds until ±{PRECISION_PCT:g} % (at most 4x), median of paired ratios"
FAMILIES = {"openvino": ("openvino", "openvino-int8"), "onnx": ("onnx", "onnx-int8")}


def busy_loop() -> subprocess.Popen:
    """One core's busy loop, pinned to the last core this process may use."""
    core = max(os.sched_getaffinity(0))
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                         preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    time.sleep(1.0)
    return p


def export(prune: str | None, targets: list[str]) -> Path:
    from edgevit.models import ModelSpec
    from edgevit.run.export import ExportOptions, run_export
    from edgevit.run.search import search_options, slug

    for base in (OPT, RUN / "latency"):
        out = base / slug(prune)
        if all((out / "artifacts" / t / "manifest.json").exists() for t in targets):
            return out
    out = RUN / "latency" / slug(prune)
    options = {"calib": str(IMAGENET), "calib_size": 8}
    options.update({k: v for t in targets for k, v in search_options(t).items()})
    run_export(ModelSpec("deit_tiny", num_classes=10, pretrained=False, prune=prune),
               ExportOptions(targets=targets, out=out, exist_ok=True, bench=False, check_images=2, options=options))
    return out


def runners(paths: list[Path]):
    from edgevit.run.artifacts import load_artifact

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    fns = []
    for p in paths:
        _, run, _, _ = load_artifact(p, None)
        fns.append(lambda run=run: run(x))
    return fns


def protocols(fns, rounds: int, seed: int) -> dict[str, dict]:
    """int8 / fp32 by each protocol (fns = [int8, fp32])."""
    from edgevit.eval.timing import RoundTimes, time_rounds

    out = {}
    rt = time_rounds(fns, ["int8", "fp32"], rounds=rounds, iters=1, warmup=10, round_warmup=0, seed=seed,
                     precision_pct=PRECISION_PCT)
    out[EDGEVIT] = {**rt.ratio(0, 1).to_dict(), "context": rt.context}
    fixed = RoundTimes(rt.labels, rt.times[:, :rounds])  # the same run's first rounds: the fixed-count protocol
    out[f"one-run rounds, fixed at {rounds}, median of paired ratios"] = fixed.ratio(0, 1).to_dict()
    rt4 = time_rounds(fns, ["int8", "fp32"], rounds=max(2, rounds // 4), iters=4, warmup=2, round_warmup=1,
                      seed=seed + 1)
    for fig in ("min", "q25", "median", "mean"):
        out[f"four-run rounds, per-round {fig}"] = rt4.ratio(0, 1, fig).to_dict()
    old = time_rounds(fns, ["int8", "fp32"], rounds=3, iters=100, warmup=5, round_warmup=5, seed=seed + 2)
    p50 = np.median(old.times, axis=2)  # (subject, round)
    ratio = float(np.median(p50[0]) / np.median(p50[1]))
    out["before: 3 rounds x 100 runs, ratio of medians"] = {"ratio": ratio, "ci95": None, "halfwidth_pct": None}
    return out


def noise_part(rounds: int) -> tuple[list[dict], dict]:
    base = export(None, ["onnx", "onnx-int8"])
    fns = runners([base / "artifacts" / "onnx-int8", base / "artifacts" / "onnx"])
    runs = {}
    for k, busy in enumerate((False, True, False, True)):
        p = busy_loop() if busy else None
        try:
            runs.setdefault(busy, []).append(protocols(fns, rounds, seed=10 * k))
        finally:
            if p:
                p.kill()
                p.wait()
    rows = []
    for busy, reps in runs.items():
        for i, res in enumerate(reps):
            for name, r in res.items():
                rows.append({"part": "ORT int8 / ORT fp32, DeiT-Ti @224", "condition": "busy loop" if busy else "quiet",
                             "repeat": i, "protocol": name, **{k: r.get(k) for k in ("ratio", "ci95", "halfwidth_pct",
                                                                                      "verdict", "text", "context")}})
    shifts = {}
    for name in runs[False][0]:
        quiet = np.median([rep[name]["ratio"] for rep in runs[False]])
        busy = np.median([rep[name]["ratio"] for rep in runs[True]])
        hw = [rep[name]["halfwidth_pct"] for rep in runs[True]]
        shifts[name] = {"quiet_ratio": float(quiet), "busy_ratio": float(busy),
                        "shift_pct": float(100 * abs(busy / quiet - 1)),
                        "busy_halfwidth_pct": float(max(hw)) if None not in hw else None}
    return rows, shifts


def five_fastest(fam: str, screen_rounds: int) -> tuple[list[Path], list[str], dict]:
    """Every default-space candidate of ``fam`` at 224, screened in one pass; the five fastest."""
    from edgevit.run.artifacts import bench_artifacts_timed
    from edgevit.run.search import default_space

    paths, keys = [], []
    for prune in default_space(12, 196):
        base = export(prune, list(FAMILIES[fam]))
        for t in FAMILIES[fam]:
            paths.append(base / "artifacts" / t)
            keys.append(f"{prune or 'dense'}|{t}")
    rows, rt = bench_artifacts_timed(paths, reference=False, warmup=5, iters=1, rounds=screen_rounds)
    est = rt.estimates()
    top = sorted(range(len(paths)), key=lambda i: est[i])[:5]
    return [paths[i] for i in top], [keys[i] for i in top], {keys[i]: est[i] for i in range(len(keys))}


def choice_part(repeats: int, rounds: int) -> tuple[list[dict], dict]:
    from edgevit.eval.timing import choose
    from edgevit.run.artifacts import bench_artifacts_timed

    rows, same = [], {}
    for fam in FAMILIES:
        paths, keys, screen = five_fastest(fam, 20)
        rows.append({"part": f"screening, {fam}", "estimates_ms": screen, "five_fastest": keys})
        picks = []
        for k in range(repeats):
            _, rt = bench_artifacts_timed(paths, reference=False, warmup=5, iters=1, rounds=rounds, seed=100 + k,
                                          precision_pct=PRECISION_PCT)
            rt.labels = keys
            ch = choose(rt)
            picks.append(ch.to_dict(keys))
            rows.append({"part": f"choice, {fam}", "repeat": k, **picks[-1], "rounds_run": rt.context["rounds_run"],
                         "stopped": rt.context["stopped"]})
        modal = collections.Counter(p["winner"] for p in picks).most_common(1)[0][0]
        agree = [p["winner"] == modal or modal in p["tied"] for p in picks]
        same[fam] = {"modal_winner": modal, "winners": [p["winner"] for p in picks],
                     "same_or_tied_pct": 100.0 * sum(agree) / len(agree)}
    return rows, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="one-run rounds per ratio (edgevit's protocol)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the choice among the five fastest")
    ap.add_argument("--choice-rounds", type=int, default=120, help="head-to-head rounds per choice (the search's)")
    args = ap.parse_args()
    t0 = time.monotonic()
    noise_rows, shifts = noise_part(args.rounds)
    choice_rows, same = choice_part(args.repeats, args.choice_rounds)
    ours = shifts[EDGEVIT]
    for name, s in shifts.items():
        hw = f"{s['busy_halfwidth_pct']:.1f} %" if s["busy_halfwidth_pct"] is not None else "—"
        print(f"{name:<52} quiet {s['quiet_ratio']:.3f}  busy {s['busy_ratio']:.3f}  shift {s['shift_pct']:5.1f} %"
              f"  busy half-width {hw}")
    for fam, s in same.items():
        print(f"{fam}: winners {s['winners']} -> {s['same_or_tied_pct']:.0f} % same or tied")
    checks = [
        check("paired_ratio_ci95_halfwidth_pct", ours["busy_halfwidth_pct"], "<=", 10.0),
        check("estimator_shift_under_load_pct", ours["shift_pct"], "<=", 15.0),
        check("same_choice_in_repeats_pct", min(s["same_or_tied_pct"] for s in same.values()), ">=", 80.0),
    ]
    write_results(__file__, noise_rows + choice_rows, checks, estimator_comparison=shifts, choice=same,
                  minutes=(time.monotonic() - t0) / 60, rounds=args.rounds, repeats=args.repeats)


if __name__ == "__main__":
    main()
