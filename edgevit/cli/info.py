"""Commands that inspect: models, targets, validate, bench, report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..progress import table
from .common import friendly, out


def register(app: typer.Typer) -> None:
    for fn in (models, targets, validate, bench, report):
        app.command(fn.__name__)(friendly(fn))


def models():
    """List the model zoo's short names (any timm model name works as well)."""
    from .. import api

    t = table("name", "timm model", "family", "params M", "ImageNet top-1", "note", title="edgevit models")
    for m in api.models():
        t.add_row(m.name, m.timm_name, m.family, f"{m.params_m:.1f}",
                  f"{m.imagenet_top1:.1f}" if m.imagenet_top1 else "—", m.note)
    out.print(t)


def targets(options: bool = typer.Option(False, "--options", help="list every target option: type, default and the targets that honour it")):
    """List export targets, their backend and whether it is installed here (--options: their options)."""
    from .. import api

    if options:
        t = table("option", "type", "default", "honoured by", title="target options (--flag on export/quantize, "
                  "or under options: in a recipe)")
        for f in api.target_options().values():
            t.add_row(f.name, str(f.type).replace("typing.", ""), repr(f.default), ", ".join(f.targets))
        out.print(t)
        return
    t = table("target", "backend", "precision", "status", "what it makes", title="edgevit targets")
    for tg in api.targets():
        status = tg.status()
        t.add_row(tg.name, tg.backend, tg.precision,
                  "[green]ready[/]" if status == "ready" else f"[yellow]{status}[/]", tg.description)
    out.print(t)


def validate(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (runs/<run>/artifacts/<target>)"),
    data: str = typer.Option(..., help="labelled images: ImageFolder, CIFAR folder or 'digits'"),
    split: str = typer.Option("test", help="train | val | test | all"),
    limit: Optional[int] = typer.Option(None, help="a stratified subset of this many images"),
    val_fraction: float = typer.Option(0.2, help="hold-out fraction for data without its own split"),
    seed: int = typer.Option(0, help="seed of that deterministic, stratified split"),
    batch_size: int = typer.Option(64),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the results here"),
):
    """Top-1/top-5 of each artifact and of its float PyTorch model on the same images: agreement, drop."""
    from .. import api

    res = api.validate(list(artifacts), data, split, limit=limit, val_fraction=val_fraction, seed=seed,
                             batch_size=batch_size)
    t = table("artifact", "images", "top-1", "float top-1", "drop pts", "agreement %", "top-5", "max |Δlogit|")
    for name, r in res.items():
        t.add_row(name, str(r["images"]), f"{r['top1']:.2f}", f"{r['float_top1']:.2f}", f"{r['top1_drop_pts']:+.2f}",
                  f"{r['agreement_pct']:.2f}", f"{r['top5']:.2f}", f"{r['max_abs_logit_diff']:.2e}")
    out.print(t)
    if json_out:
        from ..manifest import write_json
        write_json(json_out, res)


def bench(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories"),
    batch: int = typer.Option(1), threads: Optional[int] = typer.Option(None, help="default: all cores"),
    warmup: int = typer.Option(10), iters: int = typer.Option(100),
    rounds: int = typer.Option(1, help="interleaved rounds (eager, a1, a2, ... then again): the median of the rounds' figures, and their spread in the noise column"),
    reference: bool = typer.Option(True, help="include PyTorch eager as the reference row"),
    gpu: bool = typer.Option(True, help="on a CUDA machine, add PyTorch GPU rows (fp32, fp16, fp16 + torch.compile)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows here"),
):
    """Latency of artifacts: warm-up, then p50/p90/p99, throughput, peak memory, size; PyTorch eager first.

    On a CUDA machine the same table holds PyTorch on the GPU, ONNX Runtime's CUDA provider (with
    onnxruntime-gpu installed) and TensorRT engines."""
    from .. import api
    from ..errors import OptionError
    from ..eval.machine import cpu_facts, isa_label

    if rounds < 1:
        raise OptionError(f"--rounds must be at least 1, got {rounds}", "pass --rounds 3 (or leave it out)")
    rows = api.bench(list(artifacts), batch=batch, threads=threads, warmup=warmup, iters=iters,
                     reference=reference, gpu=gpu, rounds=rounds)
    cpu = cpu_facts()
    t = table("row", "precision", "p50 ms", "p90 ms", "p99 ms", "img/s", "× eager", "peak MB", "size MB", "noise",
              title=f"{cpu['cpu']}, {cpu['cores']} cores, {isa_label(cpu['isa'])}")
    for r in rows:
        noise = r.get("noise") or {}
        spread = noise.get("round_spread_pct")
        t.add_row(r["name"], str(r.get("runtime_precision")), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                  f"{r['p99_ms']:.2f}", f"{r['throughput_ips']:.1f}", f"{r.get('speedup_vs_eager', 1):.2f}",
                  f"{r['peak_mem_mb']:.0f}", f"{r.get('size_mb', 0):.1f}",
                  ("[yellow]noisy[/]" if noise.get("noisy") else "ok") + (f" ±{spread / 2:.0f} %" if spread else ""))
    out.print(t)
    for r in rows:
        if (r.get("noise") or {}).get("noisy"):
            out.print(f"[yellow]warning:[/] {r['name']}: {r['noise']['why']}")
    if json_out:
        from ..manifest import write_json
        write_json(json_out, rows)


def report(run_dir: Path = typer.Argument(..., help="a run directory made by export/run/quickstart"),
           device_results: List[Path] = typer.Option([], "--device-results", "-d", help="JSON written on a device by deploy/jetson/edgevit_jetson.sh; merged into the run's results (repeatable)")):
    """Write report.json, report.md and report.html (with plot.png) for a run directory.

    Device results (e.g. TensorRT latency, power and temperature measured on a Jetson) are kept in
    the run's results/device.json, so later reports include them too:

        edgevit report runs/deit_tiny-tensorrt-int8 --device-results jetson.json
    """
    from .. import api

    path = api.report(run_dir, device_results)
    if device_results:
        out.print(f"device results: {Path(run_dir) / 'results' / 'device.json'}", highlight=False)
    out.print(f"report: {path}", highlight=False)
