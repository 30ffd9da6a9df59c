"""GPU check (issue 14): PyTorch GPU rows for DeiT-Ti/S and the precision cost of int8 GEMMs in one ViT block.

For whenever a GPU machine (H100/H200, torch; TensorRT not needed) is at hand; one run takes about 8 minutes
(a wall-clock guard stops adding rounds after 7):

    python benchmarks/gpu_check.py                 # writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --dry-run       # the whole code path on CPU at toy sizes, in seconds

What it shows:
- DeiT-Ti and DeiT-S @224 (random weights: latency does not depend on them) in PyTorch on the GPU: fp32,
  fp16 (``.half()``) and fp16 + ``torch.compile``, at batch 1 (latency) and batch 64 (throughput). The input
  is already on the GPU; CUDA events time each call.
- Why an int8 engine whose non-GEMM work stays fp32 does not beat fp16: one DeiT-S block (dim 384, 6 heads,
  MLP 1536, 197 tokens) at batch 1/8/64, captured in a CUDA graph, as (a) fp16 everywhere, (b) int8 GEMMs
  (``torch._int_mm``: static per-tensor activation scale, per-channel weight scales, int32 out, dequantized
  after) with fp32 everywhere else, (c) the same int8 GEMMs with fp16 everywhere else.
Every variant is measured in every round, round-robin; a row's figure is the median over rounds of its
p50/p90, and ``spread_pct`` is the range of the per-round p50s over their median.
- With trtexec: is attention fused, which Cast/Reformat layers remain, at batch 1 and 64 (:mod:`trtexec_layers`).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trtexec_layers  # noqa: E402
from _common import RESULTS, check, machine  # noqa: E402

GUARD_S = 420.0  # no new round starts once the run has used ~7 minutes
MODEL_VARIANTS = [("fp32", torch.float32, False), ("fp16", torch.float16, False), ("fp16-compile", torch.float16, True)]
BLOCK_MODES = ["fp16", "int8-fp32", "int8-fp16"]
LINEARS = ["qkv", "proj", "fc1", "fc2"]
FULL = {"img": 224, "model_extra": {}, "model_batches": (1, 64), "rounds": 10, "iters": {1: 100, 64: 20},
        "block": {"dim": 384, "heads": 6, "mlp": 1536, "tokens": 197}, "block_batches": (1, 8, 64),
        "samples": 50, "inner": 20, "warmup": 10}
TOY = {"img": 16, "model_extra": {"patch_size": 8, "extra": {"depth": 2}}, "model_batches": (1, 64), "rounds": 1,
       "iters": {1: 3, 64: 2}, "block": {"dim": 64, "heads": 2, "mlp": 256, "tokens": 17},
       "block_batches": (1, 8, 64), "samples": 3, "inner": 1, "warmup": 1}
NOTES = [
    "Attention score matmuls (q@k^T, p@v) are not int8 in any block variant: scaled_dot_product_attention in fp16 "
    "for fp16 and int8-fp16, in fp32 for int8-fp32. The int8 GEMMs are the four linear layers (qkv, proj, fc1, fc2).",
    "int8 GEMM = torch._int_mm (int8 x int8 -> int32): activations quantized per tensor with a static scale "
    "(calibrated once on a batch-8 input, symmetric, [-127, 127]), weights per output channel; dequantization "
    "(int32 * act_scale * weight_scale + bias) computed in fp32 and stored in the variant's dtype.",
    "The proxy runs PyTorch eager ops captured in a CUDA graph: no launch overhead, but no fusion either, so the "
    "quantize and dequantize passes are separate memory-bound kernels (TensorRT fuses them into the GEMMs).",
    "LayerNorm on fp16 tensors accumulates in fp32 inside the kernel (as the tensorrt-fp16 graph does behind casts).",
    "fp32 rows use PyTorch's default matmul precision (TF32 off).",
    "The issue sets no bars: the two checks are premises (int8 GEMMs gain from fp16 around them; and they beat "
    "plain fp16 at batch 64), kept so that check_results.py passes only where a premise holds.",
]


# ---- int8 GEMM helpers (quantize, torch._int_mm or its exact emulation, dequantize) ----
def _int_mm_emulated(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 matmul in int32 (only where torch._int_mm is missing on the CPU)."""
    return a.to(torch.int32) @ b.to(torch.int32)


def pick_int_mm(device: torch.device) -> tuple[Callable, str]:
    """``torch._int_mm`` when it runs on ``device``; on a CPU without it, the exact emulation."""
    try:
        a = torch.ones(17, 8, dtype=torch.int8, device=device)
        ok = int(torch._int_mm(a, a.t()[:, :8].contiguous())[0, 0]) == 8
    except (RuntimeError, AttributeError):
        if device.type == "cuda":
            raise
        ok = False
    if ok:
        return torch._int_mm, "torch._int_mm"
    if device.type == "cuda":
        raise RuntimeError("torch._int_mm gives a wrong result on this GPU")
    return _int_mm_emulated, "int32 matmul emulation (torch._int_mm does not run on this CPU)"


def int_mm(a: torch.Tensor, b: torch.Tensor, mm: Callable = torch._int_mm) -> torch.Tensor:
    """``a @ b`` for int8 ``a`` (m, k) and ``b`` (k, n) into int32. CUDA's _int_mm needs m > 16 and k, n multiples
    of 8: rows are padded to 17 when fewer (a DeiT block has >= 197, so the proxy never pads)."""
    m = a.shape[0]
    if m <= 16:
        a = F.pad(a, (0, 0, 0, 17 - m))
    return mm(a, b)[:m]


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a linear weight (n, k): (int8 weight, fp32 scale (n,))."""
    scale = w.float().abs().amax(dim=1).clamp_min(1e-8) / 127.0
    return torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def prepare_int8(w: torch.Tensor, b: torch.Tensor, act_amax: float) -> dict[str, Any]:
    """One int8 linear layer: the weight, the static activation scale and the combined dequantization scale."""
    wq, w_scale = quantize_weight(w)
    act_scale = max(float(act_amax), 1e-8) / 127.0
    return {"wq_t": wq.t(), "inv_act": 1.0 / act_scale, "deq": (act_scale * w_scale).contiguous(),
            "bias": b.float().contiguous()}


def int8_linear(x: torch.Tensor, q: dict[str, Any], out_dtype: torch.dtype,
                mm: Callable = torch._int_mm) -> torch.Tensor:
    """x (m, k) -> quantize (x's dtype) -> int8 GEMM (int32) -> dequantize + bias in fp32, stored as ``out_dtype``.
    ``wq_t`` is the transpose view of a contiguous (n, k) weight: column-major, as cuBLAS's int8 GEMM wants."""
    xq = torch.round(x * q["inv_act"]).clamp_(-127, 127).to(torch.int8)
    acc = int_mm(xq, q["wq_t"], mm)
    out = torch.empty(acc.shape, dtype=out_dtype, device=acc.device)
    return torch.addcmul(q["bias"], acc, q["deq"], out=out)


# ---- one DeiT block, three precisions ----
def block_params(dim: int, mlp: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"qkv": (3 * dim, dim), "proj": (dim, dim), "fc1": (mlp, dim), "fc2": (dim, mlp)}
    p = {}
    for name, (n, k) in shapes.items():
        p[f"{name}_w"] = torch.randn(n, k, generator=g) * k ** -0.5
        p[f"{name}_b"] = torch.randn(n, generator=g) * 0.02
    for ln in ("ln1", "ln2"):
        p[f"{ln}_w"], p[f"{ln}_b"] = 1.0 + 0.1 * torch.randn(dim, generator=g), 0.02 * torch.randn(dim, generator=g)
    return {k: v.to(device) for k, v in p.items()}


def block_forward(x: torch.Tensor, p: dict[str, torch.Tensor], heads: int, lin: Callable) -> torch.Tensor:
    """Pre-norm ViT block; ``lin(name, x2d)`` is the linear layer (float or int8)."""
    b, n, c = x.shape
    h = F.layer_norm(x, (c,), p["ln1_w"], p["ln1_b"])
    qkv = lin("qkv", h.reshape(b * n, c)).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    x = x + lin("proj", a.transpose(1, 2).reshape(b * n, c)).reshape(b, n, c)
    h = F.layer_norm(x, (c,), p["ln2_w"], p["ln2_b"])
    return x + lin("fc2", F.gelu(lin("fc1", h.reshape(b * n, c)))).reshape(b, n, c)


def float_lin(p: dict[str, torch.Tensor], dtype: torch.dtype, seen: dict[str, float] | None = None) -> Callable:
    w = {n: (p[f"{n}_w"].to(dtype), p[f"{n}_b"].to(dtype)) for n in LINEARS}

    def lin(name: str, h: torch.Tensor) -> torch.Tensor:
        if seen is not None:
            seen[name] = max(seen.get(name, 0.0), float(h.abs().amax()))
        return F.linear(h, *w[name])
    return lin


def block_fn(mode: str, p32: dict, amax: dict, x32: torch.Tensor, heads: int, mm: Callable) -> Callable:
    """The block of ``mode`` on a fixed input (made here, in the mode's dtype): a no-argument callable."""
    dtype = torch.float32 if mode == "int8-fp32" else torch.float16
    p = {k: v.to(dtype) for k, v in p32.items() if k.startswith("ln")}
    if mode == "fp16":
        lin = float_lin(p32, dtype)
    else:
        qs = {n: prepare_int8(p32[f"{n}_w"], p32[f"{n}_b"], amax[n]) for n in LINEARS}

        def lin(name: str, h: torch.Tensor) -> torch.Tensor:
            return int8_linear(h, qs[name], dtype, mm)
    x = x32.to(dtype)
    return lambda: block_forward(x, p, heads, lin)


def cuda_graph(fn: Callable) -> Callable:
    """Capture ``fn`` (after warmup on a side stream) in a CUDA graph; returns its replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g.replay


def block_items(cfg: dict, dev: torch.device, mm: Callable) -> list[dict[str, Any]]:
    bc, cuda = cfg["block"], dev.type == "cuda"
    p32 = block_params(bc["dim"], bc["mlp"], dev)
    g = torch.Generator().manual_seed(1)
    amax: dict[str, float] = {}
    block_forward(torch.randn(8, bc["tokens"], bc["dim"], generator=g).to(dev), p32, bc["heads"],
                  float_lin(p32, torch.float32, amax))  # calibration: static activation scales
    items = []
    for batch in cfg["block_batches"]:
        x32 = torch.randn(batch, bc["tokens"], bc["dim"], generator=g).to(dev)
        ref = block_forward(x32, p32, bc["heads"], float_lin(p32, torch.float32))
        for mode in BLOCK_MODES:
            item = {"row": {"name": f"block-{mode}-b{batch}", "kind": "block", "mode": mode, "batch": batch,
                            **bc, "graph": cuda}, "iters": cfg["samples"], "inner": cfg["inner"]}
            fn = block_fn(mode, p32, amax, x32, bc["heads"], mm)
            out = fn().float()
            item["row"]["rel_err_vs_fp32"] = float((out - ref).norm() / ref.norm())
            try:
                item["fn"] = cuda_graph(fn) if cuda else fn
            except Exception as e:  # noqa: BLE001 - a capture failure is reported, the eager block still times
                item["row"].update(graph=False, graph_error=f"{type(e).__name__}: {e}"[:300])
                item["fn"] = fn
            items.append(item)
    return items


# ---- DeiT-Ti/S model rows ----
def model_items(cfg: dict, dev: torch.device, t0: float) -> list[dict[str, Any]]:
    from edgevit.models import ModelSpec, create_model

    items = []
    for name in ("deit_tiny", "deit_small"):
        torch.manual_seed(0)
        base = create_model(ModelSpec(name, pretrained=False, img_size=cfg["img"], **cfg["model_extra"]))
        for tag, dtype, compiled in MODEL_VARIANTS:
            m = copy.deepcopy(base).to(dev, dtype).eval()
            skip = None
            if compiled and dev.type != "cuda":
                skip = "torch.compile not run on CPU (--dry-run)"
            elif compiled and time.perf_counter() - t0 > GUARD_S / 2:
                skip = "torch.compile skipped: half the wall-clock guard was spent before it"
            fn = torch.compile(m, dynamic=False) if compiled and not skip else m
            for batch in cfg["model_batches"]:
                row = {"name": f"{name}-{tag}-b{batch}", "kind": "model", "model": name, "variant": tag,
                       "batch": batch, "img_size": cfg["img"]}
                items.append(_model_item(row, fn, dtype, dev, cfg, skip))
    return items


def _model_item(row: dict, fn: Callable, dtype: torch.dtype, dev: torch.device, cfg: dict,
                skip: str | None) -> dict[str, Any]:
    item = {"row": row, "iters": cfg["iters"][row["batch"]], "inner": 1}
    if skip:
        row["skipped"] = skip
        return item
    x = torch.randn(row["batch"], 3, cfg["img"], cfg["img"], device=dev, dtype=dtype)
    try:
        t = time.perf_counter()
        fn(x)
        _sync(dev)
        row["first_call_s"] = time.perf_counter() - t  # includes the compile for fp16-compile
        for _ in range(cfg["warmup"]):
            fn(x)
        _sync(dev)
    except Exception as e:  # noqa: BLE001 - torch.compile fails in many ways; the other rows still stand
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        return item
    item["fn"] = lambda: fn(x)
    return item


# ---- timing ----
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable, n: int, inner: int, dev: torch.device) -> np.ndarray:
    """``n`` samples in ms, each the mean of ``inner`` back-to-back calls (CUDA events on a GPU)."""
    fn()
    if dev.type != "cuda":
        out = []
        for _ in range(n):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t) * 1e3 / inner)
        return np.asarray(out)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
    torch.cuda.synchronize()
    return np.asarray([s.elapsed_time(e) / inner for s, e in events])


def run_rounds(items: list[dict], rounds: int, dev: torch.device, t0: float) -> dict[str, Any]:
    """Round-robin over every timed item (rotated start each round); no new round once the guard would pass."""
    live = [it for it in items if "fn" in it]
    for it in live:
        it["p50"], it["p90"] = [], []
    done, last, stop = 0, 0.0, None
    for r in range(rounds):
        used = time.perf_counter() - t0
        if done and used + last > GUARD_S:
            stop = f"wall-clock guard: stopped after {done} of {rounds} rounds at {used:.0f} s"
            break
        start = time.perf_counter()
        for it in live[r % len(live):] + live[:r % len(live)]:
            t = measure(it["fn"], it["iters"], it["inner"], dev)
            it["p50"].append(float(np.percentile(t, 50)))
            it["p90"].append(float(np.percentile(t, 90)))
        last, done = time.perf_counter() - start, done + 1
    return {"rounds_done": done, "rounds_asked": rounds, "guard_s": GUARD_S, "guard_stop": stop}


def finish_rows(items: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for it in items:
        row = dict(it["row"])
        if it.get("p50"):
            med = statistics.median(it["p50"])
            row.update(p50_ms=med, p90_ms=statistics.median(it["p90"]), p50_ms_per_round=it["p50"],
                       spread_pct=100 * (max(it["p50"]) - min(it["p50"])) / med,
                       throughput_ips=row["batch"] * 1000 / med, samples=it["iters"], calls_per_sample=it["inner"])
        rows.append(row)
    by = {r["name"]: r for r in rows}
    for r in rows:
        ref = by.get(r["name"].replace(r.get("variant", r.get("mode", "")), "fp32" if r["kind"] == "model" else "fp16"))
        if ref and "p50_ms" in r and "p50_ms" in ref:
            r["speedup_vs_fp32" if r["kind"] == "model" else "latency_vs_fp16"] = (
                ref["p50_ms"] / r["p50_ms"] if r["kind"] == "model" else r["p50_ms"] / ref["p50_ms"])
    return rows


def make_checks(rows: list[dict]) -> list[dict[str, Any]]:
    by = {r["name"]: r.get("p50_ms", float("nan")) for r in rows}
    i8_16, i8_32, f16 = by["block-int8-fp16-b64"], by["block-int8-fp32-b64"], by["block-fp16-b64"]
    return [check("int8_fp16_vs_int8_fp32_block_latency_ratio_b64", i8_16 / i8_32, "<=", 1.0),
            check("int8_fp16_vs_fp16_block_latency_ratio_b64", i8_16 / f16, "<=", 1.0)]


# ---- machine facts, output ----
def gpu_facts(dev: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if dev.type == "cuda":
        prop = torch.cuda.get_device_properties(dev)
        out.update(gpu=prop.name, capability=f"{prop.major}.{prop.minor}",
                   gpu_mem_gb=round(prop.total_memory / 2**30, 1))
    for lib in ("triton", "onnxruntime", "tensorrt"):
        mod = __import__(lib) if importlib.util.find_spec(lib) else None
        out[lib] = getattr(mod, "__version__", "present") if mod else None
    if out["onnxruntime"]:
        out["onnxruntime_providers"] = __import__("onnxruntime").get_available_providers()
    return out


def write(out: Path, dev: torch.device, rows: list, checks: list, **extra: Any) -> None:
    from edgevit.manifest import library_versions, write_json

    cmd = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gpu_check.py", *sys.argv[1:]])
    write_json(out, {"command": cmd, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "machine": {**machine(), **gpu_facts(dev)}, "versions": library_versions(), **extra,
                     "rows": rows, "checks": checks})
    for r in rows:
        figs = (f"p50 {r['p50_ms']:8.3f} ms  p90 {r['p90_ms']:8.3f} ms  ±{r['spread_pct']:4.1f}%"
                if "p50_ms" in r else r.get("skipped") or r.get("error") or r.get("summary", "not timed"))
        print(f"{r['name']:<28} {figs}")
    for c in checks:
        print(f"  {'PASS' if c['ok'] else 'MISS'} {c['name']} = {c['value']:.4g} {c['op']} {c['bar']}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, 1 round: the code path in seconds")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default benchmarks/results/gpu_check.json; with --dry-run a temp file)")
    ap.add_argument("--rounds", type=int, default=None)
    trtexec_layers.add_arguments(ap)
    args = ap.parse_args(argv)
    committed = RESULTS / "gpu_check.json"
    if args.dry_run:
        out = args.out or Path(tempfile.gettempdir()) / "gpu_check.dry-run.json"
        if out.resolve() == committed.resolve():
            ap.error(f"--dry-run never writes {committed}: that file holds the GPU result")
        dev, cfg = torch.device("cpu"), TOY
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False). Run it on a GPU machine, or pass "
              "--dry-run to check the code path on the CPU.", file=sys.stderr)
        return 2
    else:
        out, dev, cfg = args.out or committed, torch.device("cuda"), FULL
    t0 = time.perf_counter()
    mm, mm_name = pick_int_mm(dev)
    with torch.inference_mode():
        items = model_items(cfg, dev, t0) + block_items(cfg, dev, mm)
        timing = run_rounds(items, args.rounds or cfg["rounds"], dev, t0)
    rows = finish_rows(items) + trtexec_layers.section(args.trtexec, args.trt_artifacts, cfg["img"], cfg["model_extra"])
    notes = NOTES + ([f"--dry-run: toy sizes on the CPU, no CUDA graphs, no torch.compile; int8 GEMM by {mm_name}."]
                     if args.dry_run else [])
    write(out, dev, rows, make_checks(rows), dry_run=args.dry_run, device=str(dev), int8_gemm=mm_name,
          block=cfg["block"], timing={**timing, "wall_s": round(time.perf_counter() - t0, 1)}, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
