"""Latency: warm-up, then timed runs; percentiles, throughput, peak memory, model size.

Peak memory is the resident-set high-water mark added by loading and running the model
(Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``,
which cannot be reset and so over-reports).
"""
from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import describe
from ..progress import progress_bar


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


def bench_callable(make: Callable[[], Callable[[np.ndarray], Any]], x: np.ndarray, warmup: int, iters: int,
                   label: str, min_seconds: float = 0.0) -> dict[str, Any]:
    """``make()`` loads the model (counted in peak memory) and returns the predict function."""
    with peak_memory() as mem:
        fn = make()
        times = time_fn(lambda: fn(x), warmup, iters, min_seconds, label)
    return {**summarize(times, x.shape[0]), "peak_mem_mb": mem["peak_mb"]}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bench_eager(model: torch.nn.Module, x: np.ndarray, threads: int | None, warmup: int, iters: int,
                min_seconds: float = 0.0) -> dict[str, Any]:
    """PyTorch eager in inference mode: the reference row of every table."""
    xt = torch.from_numpy(x)

    def make():
        def run(_):
            with torch.inference_mode():
                return model(xt)
        return run

    with torch_threads(threads):
        row = bench_callable(make, x, warmup, iters, "pytorch eager", min_seconds)
    return {"name": "pytorch-eager", "backend": "pytorch", "precision": "fp32", "runtime_precision": "fp32",
            "runtime": f"torch {torch.__version__}", "size_mb": param_mb(model), **row}


def param_mb(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


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
                     "size_mb": param_mb(m), **row})
    eager16 = next((r for r in rows if r["name"].endswith("-fp16") and "p50_ms" in r), None)
    for r in rows:
        if r["name"].endswith("-compile") and "p50_ms" in r and eager16:
            r["helps"] = r["p50_ms"] < eager16["p50_ms"]
    return rows
