"""Latency: warm-up, then timed runs; percentiles, throughput, peak memory, model size, noise.

Peak memory is the resident-set high-water mark added by loading and running the model
(Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``,
which cannot be reset and so over-reports). PyTorch eager's model is already resident when its
timing starts, so its figure adds the bytes of its parameters and buffers: the same kind of figure
as an artifact's (weights loaded + memory running takes). ``peak_mem_note`` says which one a row has.

Several subjects can be timed in interleaved rounds (:func:`bench_rounds`): a machine that slows
down for a while then slows every subject alike instead of one, and the spread of the rounds'
medians (:func:`noise_facts`) tells the reader how far one figure can be trusted.
"""
from __future__ import annotations

import contextlib
import functools
import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import describe
from ..progress import progress_bar
from .timing import RoundTimes, estimate, time_rounds


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """``with peak_memory() as m: ...`` then ``m['peak_mb']``: RSS high-water growth in the block."""
    out: dict[str, float] = {}
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    base = _rss_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        yield out
    finally:
        peak = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_mb"] = max(0.0, ((peak or 0) - (base or 0)) / 1024.0)


def time_fn(fn: Callable[[], Any], warmup: int = 10, iters: int = 100, min_seconds: float = 0.0,
            label: str = "timing") -> np.ndarray:
    """Run ``fn`` ``warmup`` times untimed, then at least ``iters`` times (and ``min_seconds``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    with progress_bar(label, total=iters, unit="run") as advance:
        while len(times) < iters or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            advance(1)
    return np.asarray(times) * 1e3


def summarize(times_ms: np.ndarray, batch: int) -> dict[str, float]:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
        "mean_ms": float(times_ms.mean()), "min_ms": float(times_ms.min()),
        "throughput_ips": float(batch * 1000.0 / times_ms.mean()), "runs": int(len(times_ms)),
    }


NOISY_P90_OVER_P50 = 1.5  # slower runs this much above the median: the machine was busy
NOISY_SPREAD_PCT = 25.0  # rounds' medians this far apart: the machine's speed changed while timing
PEAK_NOTE_LOAD = "resident memory added by loading and running it"
PEAK_NOTE_EAGER = ("its parameters and buffers (resident before timing) plus the resident memory running "
                   "added: comparable with the artifacts' load-and-run figure")
SHORT_ROUND = 5
_ADVICE = "re-run on a quiet machine before trusting this figure"


def summarize_rounds(times_per_round: Sequence[np.ndarray], batch: int) -> dict[str, Any]:
    """:func:`summarize` of every run, with p50/p90/p99 the median over rounds of each round's figure
    (rounds of at least ``SHORT_ROUND`` runs; shorter ones are pooled)."""
    row: dict[str, Any] = summarize(np.concatenate(list(times_per_round)), batch)
    if min(len(t) for t in times_per_round) < SHORT_ROUND:  # short paired rounds: percentiles of every run
        return {**row, "rounds": len(times_per_round)}
    per_round = np.array([np.percentile(t, [50, 90, 99]) for t in times_per_round])
    p50, p90, p99 = np.median(per_round, axis=0)
    row.update(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), rounds=len(times_per_round))
    return row


def noise_facts(times_per_round: Sequence[np.ndarray]) -> dict[str, Any]:
    """How far a latency figure can be trusted, from its timed runs (ms), one array per round.

    ``p90_over_p50`` (median over rounds of each), ``rounds_p50_ms``, ``round_spread_pct``
    (100 * (max - min) / median of the rounds' p50s; None with one round), ``noisy`` and ``why``
    (in words, None when not noisy). Rounds of fewer than ``SHORT_ROUND`` runs (the paired rounds of
    :func:`~edgevit.eval.timing.time_rounds`) are pooled: their spread is a run's, not the machine's, so
    ``round_spread_pct`` is None and the paired ratios' intervals say how far the figures can be trusted."""
    if min(len(t) for t in times_per_round) < SHORT_ROUND:  # many short rounds: their runs are pooled
        every = np.concatenate(list(times_per_round))
        p50, p90 = np.percentile(every, [50, 90])
        p50s, spread = [float(np.median(t)) for t in times_per_round], None
    else:
        per_round = np.array([np.percentile(t, [50, 90]) for t in times_per_round])
        p50s = [float(v) for v in per_round[:, 0]]
        p50, p90 = np.median(per_round, axis=0)
        spread = (float(100.0 * (max(p50s) - min(p50s)) / np.median(p50s)) if len(p50s) > 1 and np.median(p50s) > 0
                  else None)
    ratio = float(p90 / p50) if p50 > 0 else float("inf")
    reasons = []
    if ratio > NOISY_P90_OVER_P50:
        reasons.append(f"p90 is {ratio:.1f}x p50: the machine was busy while timing (other processes, CPU frequency)")
    if spread is not None and spread > NOISY_SPREAD_PCT:
        reasons.append(f"the median moved {spread:.0f} % between rounds ({min(p50s):.3g} to {max(p50s):.3g} ms): "
                       "the machine's speed changed while timing (other processes, CPU frequency, heat)")
    return {"p90_over_p50": ratio, "rounds_p50_ms": p50s, "round_spread_pct": spread, "noisy": bool(reasons),
            "why": "; and ".join(reasons) + f"; {_ADVICE}" if reasons else None}


@dataclass
class Subject:
    """One thing to time: ``make()`` loads it (counted in peak memory) and returns its predict function.
    ``resident_mb``: memory it already holds before ``make()`` (PyTorch eager: its weights).
    ``torch_threads``: torch's thread count while it runs (None: leave it)."""

    label: str
    make: Callable[[], Callable[[np.ndarray], Any]]
    resident_mb: float = 0.0
    peak_mem_note: str = PEAK_NOTE_LOAD
    torch_threads: int | None = None


def bench_rounds(subjects: Sequence[Subject], x: np.ndarray, warmup: int, iters: int, rounds: int = 1,
                 min_seconds: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """:func:`bench_rounds_timed`'s rows."""
    return bench_rounds_timed(subjects, x, warmup, iters, rounds, min_seconds, seed)[0]


def bench_rounds_timed(subjects: Sequence[Subject], x: np.ndarray, warmup: int, iters: int, rounds: int = 1,
                       min_seconds: float = 0.0, seed: int = 0, precision_pct: float | None = None,
                       ) -> tuple[list[dict[str, Any]], RoundTimes | None]:
    """Time ``subjects``. One round: each loads (under peak memory), runs ``warmup`` untimed then ``iters``
    timed runs (and ``min_seconds``) and is released before the next loads. Several rounds: all load
    and warm up first, then :func:`~edgevit.eval.timing.time_rounds` times them in ``rounds`` short
    rounds of ``iters`` runs, each round in a fresh random order (more rounds until ``precision_pct``, if
    given); the rows then carry ``estimate_ms``
    (the robust figure) and the :class:`RoundTimes` come back for paired ratios (None for one round)."""
    fns: list[Callable[[], Any] | None] = [None] * len(subjects)
    times: list[list[np.ndarray]] = [[] for _ in subjects]
    peaks: list[float] = []
    for i, s in enumerate(subjects):
        with torch_threads(s.torch_threads):
            fn, t, peak = _load_and_time(s, x, warmup, iters if rounds == 1 else 0, min_seconds, s.label)
        fns[i] = functools.partial(_in_threads, s.torch_threads, fn, x) if rounds > 1 else None
        peaks.append(peak)
        times[i].append(t)
        del fn
    rt = None
    if rounds > 1:
        rt = time_rounds(fns, [s.label for s in subjects], rounds=rounds, iters=iters, warmup=0,
                         round_warmup=1 if iters > 1 else 0, seed=seed, label=f"{rounds} interleaved rounds",
                         precision_pct=precision_pct)
        times = [list(t) for t in rt.times]
    rows = [{**summarize_rounds(t, x.shape[0]), "estimate_ms": estimate(np.asarray(t) if rounds > 1 else t[0][None]),
             "peak_mem_mb": peak + s.resident_mb, "peak_mem_note": s.peak_mem_note, "noise": noise_facts(t)}
            for s, t, peak in zip(subjects, times, peaks)]
    return rows, rt


def _in_threads(n: int | None, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
    with torch_threads(n):
        return fn(x)


def _load_and_time(s: Subject, x: np.ndarray, warmup: int, iters: int, min_seconds: float, label: str):
    with peak_memory() as mem:
        fn = s.make()
        t = time_fn(functools.partial(fn, x), warmup, iters, min_seconds, label) if iters else np.zeros(0)
        if not iters:  # warm-up only: the rounds time it
            for _ in range(warmup):
                fn(x)
    return fn, t, mem["peak_mb"]


def bench_callable(make: Callable[[], Callable[[np.ndarray], Any]], x: np.ndarray, warmup: int, iters: int,
                   label: str, min_seconds: float = 0.0) -> dict[str, Any]:
    """``make()`` loads the model (counted in peak memory) and returns the predict function."""
    return bench_rounds([Subject(label, make)], x, warmup, iters, 1, min_seconds)[0]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def eager_subject(model: torch.nn.Module, x: np.ndarray, threads: int | None,
                  label: str = "pytorch eager") -> Subject:
    """PyTorch eager in inference mode as a :class:`Subject` (its weights counted in its peak memory)."""
    xt = torch.from_numpy(x)

    def make():
        def run(_):
            with torch.inference_mode():
                return model(xt)
        return run

    return Subject(label, make, resident_mb=model_mb(model), peak_mem_note=PEAK_NOTE_EAGER, torch_threads=threads)


def eager_info(model: torch.nn.Module, name: str = "pytorch-eager") -> dict[str, Any]:
    """The descriptive fields of a PyTorch eager row."""
    return {"name": name, "backend": "pytorch", "precision": "fp32", "runtime_precision": "fp32",
            "runtime": f"torch {torch.__version__}", "size_mb": param_mb(model)}


def bench_eager(model: torch.nn.Module, x: np.ndarray, threads: int | None, warmup: int, iters: int,
                min_seconds: float = 0.0, rounds: int = 1) -> dict[str, Any]:
    """PyTorch eager in inference mode: the reference row of every table."""
    row = bench_rounds([eager_subject(model, x, threads)], x, warmup, iters, rounds, min_seconds)[0]
    return {**eager_info(model), **row}


def param_mb(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def model_mb(model: torch.nn.Module) -> float:
    """Parameters and buffers, MiB: the memory a loaded PyTorch model holds."""
    return param_mb(model) + sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20


def bench_torch_gpu(model: torch.nn.Module, x: np.ndarray, warmup: int, iters: int, min_seconds: float = 0.0,
                    device: str = "cuda", compile: bool = True) -> list[dict[str, Any]]:
    """PyTorch on a GPU, the rows a desktop-GPU user compares TensorRT and ONNX Runtime CUDA with:
    fp32, fp16, and fp16 under ``torch.compile`` (kept with ``helps`` saying whether it beat eager fp16).
    Each call copies the batch to the device and the logits back, as the artifact runners do."""
    import copy

    dev = torch.device(device)
    variants = [("fp32", torch.float32, False), ("fp16", torch.float16, False)]
    if compile:
        variants.append(("fp16-compile", torch.float16, True))
    rows: list[dict[str, Any]] = []
    for tag, dtype, compiled in variants:
        m = copy.deepcopy(model).to(dev, dtype).eval()
        fn = torch.compile(m) if compiled else m

        def make(fn=fn, dtype=dtype):
            def run(a):
                with torch.inference_mode():
                    return fn(torch.from_numpy(a).to(dev, dtype)).float().cpu()
            return run

        name = f"pytorch-{dev.type}-{tag}"
        try:
            row = bench_callable(make, x, warmup, iters, name, min_seconds)
        except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways; eager rows still stand
            if not compiled:
                raise
            rows.append({"name": name, "backend": "pytorch", "error": describe(e)})
            continue
        rows.append({"name": name, "backend": "pytorch", "precision": tag.split("-")[0],
                     "runtime_precision": tag.split("-")[0], "device": dev.type,
                     "runtime": f"torch {torch.__version__}{' + torch.compile' if compiled else ''} on "
                                f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev.type}",
                     "size_mb": param_mb(m), **row,
                     "peak_mem_note": "host resident memory running added (the model's memory on the device "
                                      "is not counted)"})
    eager16 = next((r for r in rows if r["name"].endswith("-fp16") and "p50_ms" in r), None)
    for r in rows:
        if r["name"].endswith("-compile") and "p50_ms" in r and eager16:
            r["helps"] = r["p50_ms"] < eager16["p50_ms"]
    return rows
