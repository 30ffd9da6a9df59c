"""Commands that inspect: models, targets, validate, bench, report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

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
                  "[green]ready[/]" if status == "ready" else f"[yellow]{escape(status)}[/]", escape(tg.description))
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
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (with --compare, the first is the baseline)"),
    batch: int = typer.Option(1), threads: Optional[int] = typer.Option(None, help="default: all cores"),
    warmup: int = typer.Option(10), iters: Optional[int] = typer.Option(None, help="timed runs (per round with --rounds above 1); default 100, or 1 with --compare"),
    rounds: Optional[int] = typer.Option(None, help="short interleaved rounds, each in a random order, for paired ratios with 95 % intervals; default 1, or 200 with --compare"),
    compare: bool = typer.Option(False, "--compare", help="print each artifact's latency ratio against the first, with its bootstrap 95 % interval and a verdict (faster, slower, or tied when the interval spans 1.0); leaves PyTorch eager out unless --reference"),
    precision: Optional[float] = typer.Option(None, help="with --compare: keep timing (up to 4x --rounds) until every ratio's 95 % interval is within ±this % (default 5; 0 stops at --rounds)"),
    reference: Optional[bool] = typer.Option(None, "--reference/--no-reference", help="include PyTorch eager as the reference row (default: yes, except with --compare)"),
    gpu: bool = typer.Option(True, help="on a CUDA machine, add PyTorch GPU rows (fp32, fp16, fp16 + torch.compile)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the rows here"),
):
    """Latency of artifacts: warm-up, then p50/p90/p99, throughput, peak memory, size; PyTorch eager first.

    Is B faster than A on this machine? Time them together, in many short rounds:

        edgevit bench runs/a/artifacts/onnx runs/a/artifacts/onnx-int8 --compare

    prints B / A with its paired 95 % interval (the rounds resampled, both subjects' runs of a round kept
    together), so a busy neighbour slows both and cancels out; an interval that spans 1.0 is reported as
    a tie, in words. On a CUDA machine the same table holds PyTorch on the GPU, ONNX Runtime's CUDA
    provider (with onnxruntime-gpu installed) and TensorRT engines."""
    from .. import api
    from ..errors import OptionError

    rounds = rounds if rounds is not None else (200 if compare else 1)
    precision = precision if precision is not None else (5.0 if compare else 0.0)
    iters = iters if iters is not None else (1 if compare else 100)
    reference = reference if reference is not None else not compare
    if precision < 0 or (precision and rounds < 2):
        raise OptionError(f"--precision {precision:g} needs a positive half-width and --rounds of 2 or more",
                          "pass --precision 5 with --rounds 20 or more, or --precision 0 for a fixed number of rounds")
    if rounds < 1 or iters < 1:
        raise OptionError(f"--rounds and --iters must be at least 1, got {rounds} and {iters}",
                          "pass --rounds 200 --iters 1 (or leave them out)")
    if compare and (len(artifacts) + reference < 2 or rounds < 2):
        raise OptionError("--compare needs two things to compare and at least 2 rounds",
                          "pass two or more artifact directories (or --reference) and --rounds 20 or more")
    rows = api.bench(list(artifacts), batch=batch, threads=threads, warmup=warmup, iters=iters,
                     reference=reference, gpu=gpu, rounds=rounds,
                     precision_pct=precision or None)
    _bench_table(rows)
    if compare or rounds > 1:
        _ratio_lines(rows)
    if json_out:
        from ..manifest import write_json
        write_json(json_out, rows)


def _bench_table(rows: list) -> None:
    from ..eval.machine import cpu_facts, isa_class, isa_label

    cpu = cpu_facts()
    t = table("row", "precision", "p50 ms", "p90 ms", "p99 ms", "img/s", "× eager", "peak MB", "size MB", "noise",
              title=f"{cpu['cpu']}, {cpu['cores']} cores, {isa_label(cpu['isa'])} (class {isa_class(cpu['isa'])})")
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


def _ratio_lines(rows: list) -> None:
    """Each row's paired ratio against the first, with its interval and verdict in words."""
    t = table("row", "estimate ms", f"÷ {rows[0]['name']}", "95 % interval", "verdict",
              title="paired ratios (median of per-round ratios, rounds resampled for the interval)")
    for r in rows[1:]:
        q = r.get("ratio_vs_first")
        if not q:
            continue
        verdict = {"tied": "[yellow]tied[/]", "faster": "[green]faster[/]", "slower": "[red]slower[/]"}[q["verdict"]]
        t.add_row(r["name"], f"{r['estimate_ms']:.2f}", f"{q['ratio']:.3f}", f"[{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}]",
                  verdict + (" (noisy)" if q["noisy"] else ""))
    out.print(t)
    ctx = rows[-1].get("timing") or {}
    if ctx.get("rounds_run"):
        out.print(f"rounds: {ctx['rounds_planned']} planned, {ctx['rounds_run']} run ({ctx['stopped']})", highlight=False)
    for r in rows[1:]:
        if r.get("ratio_vs_first"):
            out.print(r["ratio_vs_first"]["text"], highlight=False)


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
