"""Run report: one table of every artifact (accuracy, fidelity, latency, size), as JSON, Markdown
and an HTML page with a plot of accuracy against latency, the Pareto front marked."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..manifest import read_run, write_bytes, write_json
from .device import device_rows, is_device_row
from .sections import load_json as _load
from .sections import sections_html, sections_markdown, target_sections

DEVICE_COLOR = "#76b900"  # rows measured on an edge device (results/device.json)
COLUMNS = [  # (key, header, format)
    ("name", "artifact", "{}"), ("runtime_precision", "precision", "{}"), ("size_mb", "size MB", "{:.1f}"),
    ("top1", "top-1 %", "{:.2f}"), ("top1_drop_pts", "drop pts", "{:+.2f}"), ("agreement_pct", "agree %", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"), ("p90_ms", "p90 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
    ("throughput_ips", "img/s", "{:.1f}"), ("speedup_vs_eager", "× eager", "{:.2f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
]


def collect(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    val, bench = _load(run_dir / "results" / "validate.json"), _load(run_dir / "results" / "bench.json")
    rows: dict[str, dict[str, Any]] = {}
    for name, b in bench.items():
        rows[name] = {"name": name, **b}
    for name, v in val.items():
        rows.setdefault(name, {"name": name, "runtime_precision": v.get("runtime_precision")}).update(v)
    if val and "pytorch-eager" in rows:
        first = next(iter(val.values()))
        rows["pytorch-eager"].update(top1=first["float_top1"], top5=first["float_top5"], top1_drop_pts=0.0,
                                     agreement_pct=100.0)
    ordered = sorted(rows.values(), key=lambda r: (r["name"] != "pytorch-eager", r.get("p50_ms", 1e9)))
    mark_pareto(ordered)  # this machine's rows only: a device's latency is not comparable with them
    devices = device_rows(run_dir)
    history = [json.loads(line) for line in (run_dir / "model" / "history.jsonl").read_text().splitlines()
               if line.strip()] if (run_dir / "model" / "history.jsonl").exists() else []
    return {"run": run, "rows": ordered + devices, "training": history, "sections": target_sections(run_dir),
            "device": [device_facts(r) for r in devices]}


def _prune_line(run: dict[str, Any]) -> list[str]:
    p = run.get("prune")
    if not p:
        return []
    return [f"- token pruning: {p['spec']} ({p['patch_tokens_in']} patch tokens in, "
            f"{' → '.join(map(str, p['tokens_per_block']))} after each block)"]


def device_facts(r: dict[str, Any]) -> dict[str, Any]:
    """What the Device results section shows of one row measured on an edge device."""
    d = r.get("device") or {}
    mode = d.get("power_mode") if d.get("power_mode_id") is None else f"{d.get('power_mode')} ({d['power_mode_id']})"
    return {"name": r["name"], "device": d.get("model"), "jetpack": d.get("jetpack"), "l4t": d.get("l4t"),
            "tensorrt": d.get("tensorrt"), "power_mode": mode, "power_mode_applied": d.get("power_mode_applied"),
            "jetson_clocks": d.get("jetson_clocks"), "batch": r.get("batch"),
            **{k: r.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_ips", "power_w_mean",
                                     "power_w_max", "energy_mj_per_image", "temp_c_max", "engine_build_s",
                                     "onnx_matches_run")}}


DEVICE_COLUMNS = [("name", "row"), ("device", "device"), ("software", "JetPack / TensorRT"),
                  ("power_mode", "power mode"), ("clocks", "jetson_clocks"), ("latency", "p50 / p90 / p99 ms"),
                  ("power", "power mean / max W"), ("energy", "mJ / image"), ("temp", "max °C")]


def _device_cells(f: dict[str, Any]) -> dict[str, str]:
    num = lambda v, fmt: "—" if v is None else fmt.format(v)  # noqa: E731
    mode = f["power_mode"] or "—"
    if f["power_mode"] and f["power_mode_applied"] is False:
        mode += " (as found)"
    name = f["name"] + (" (other export)" if f["onnx_matches_run"] is False else "")
    return {"name": name, "device": f["device"] or "—", "power_mode": mode,
            "software": f"{f['jetpack'] or '?'} / {f['tensorrt'] or '?'}",
            "clocks": "on" if f["jetson_clocks"] else "not set",
            "latency": " / ".join(num(f[k], "{:.2f}") for k in ("p50_ms", "p90_ms", "p99_ms")),
            "power": f"{num(f['power_w_mean'], '{:.2f}')} / {num(f['power_w_max'], '{:.2f}')}",
            "energy": num(f.get("energy_mj_per_image"), "{:.2f}"),
            "temp": num(f["temp_c_max"], "{:.1f}")}


DEVICE_NOTE = ("Measured on the device by deploy/jetson/edgevit_jetson.sh (TensorRT engine built there, timed by "
               "trtexec); power is the board's input rail from tegrastats. Top-1 is not measured on the device: "
               "the artifact's own row has its validation. Device rows stay off the Pareto front and the scatter.")


def device_markdown(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return []
    lines = ["", "## Device results", "", "| " + " | ".join(h for _, h in DEVICE_COLUMNS) + " |",
             "|" + "---|" * len(DEVICE_COLUMNS)]
    for f in items:
        cells = _device_cells(f)
        lines.append("| " + " | ".join(cells[k] for k, _ in DEVICE_COLUMNS) + " |")
    return lines + ["", DEVICE_NOTE]


def device_html(items: list[dict[str, Any]]) -> str:
    if not items:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in DEVICE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_device_cells(f)[k])}</td>" for k, _ in DEVICE_COLUMNS)
                   + "</tr>" for f in items)
    return f"<h2>Device results</h2><table><tr>{head}</tr>{body}</table><p class='note'>{html.escape(DEVICE_NOTE)}</p>"


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """A row is on the front when no other row is at least as fast and at least as accurate (and better in one).

    Rows measured on another device are left out: their latency is not comparable with this machine's."""
    pts = [r for r in rows if "p50_ms" in r and not is_device_row(r)]
    acc = "top1" if all("top1" in r for r in pts) else None
    for r in pts:
        ra = r.get(acc, 0) if acc else 0
        r["pareto"] = not any(
            o is not r and o["p50_ms"] <= r["p50_ms"] and (o.get(acc, 0) if acc else 0) >= ra
            and (o["p50_ms"] < r["p50_ms"] or (o.get(acc, 0) if acc else 0) > ra) for o in pts)


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if "p50_ms" in r and not is_device_row(r)]  # scatter: this machine's rows
    bars = [r for r in rows if "p50_ms" in r]  # bars: device rows too, hatched
    if not pts:
        return None
    has_acc = all("top1" in r for r in pts)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"pytorch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#6a3d9a"}
    ys = [r["top1"] if has_acc else r.get("size_mb", 0) for r in pts]
    span = max(ys) - min(ys)
    xspan = max(r["p50_ms"] for r in pts) - min(r["p50_ms"] for r in pts) or 1.0
    placed: list[tuple[float, float]] = []
    for r, y in sorted(zip(pts, ys), key=lambda t: t[0]["p50_ms"]):
        ax.scatter(r["p50_ms"], y, s=90 if r.get("pareto") else 45, zorder=3,
                   color=colors.get(r.get("backend"), "#d62728"), edgecolor="black" if r.get("pareto") else "none")
        # stack labels of points that sit close together instead of printing them over each other
        near = sum(1 for px, py in placed
                   if abs(py - y) <= max(span, 1.0) * 0.04 and abs(px - r["p50_ms"]) <= 0.25 * xspan)
        placed.append((r["p50_ms"], y))
        ax.annotate(f"{r['name']} ({r.get('runtime_precision') or r.get('precision')})", (r["p50_ms"], y),
                    textcoords="offset points", xytext=(6, 5 - 11 * near), fontsize=8)
    if has_acc:
        lo, hi = min(ys), max(ys)
        pad = max(0.0, 2.0 - (hi - lo)) / 2  # at least 2 points of top-1 on the axis: no magnified noise
        ax.set_ylim(lo - pad - 0.6, hi + pad + 0.4)
        ref = next((r["top1"] for r in pts if r["name"] == "pytorch-eager"), None)
        if ref is not None:
            ax.axhline(ref, color="#7f7f7f", ls="--", lw=0.8, label="float PyTorch")
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["p50_ms"])
    if has_acc and front:
        ax.step([r["p50_ms"] for r in front], [r["top1"] for r in front], where="post", color="#2ca02c",
                lw=1.5, label="Pareto front", zorder=2)
    for backend, c in colors.items():
        if any(r.get("backend") == backend for r in pts):
            ax.scatter([], [], color=c, label=backend)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("p50 latency, ms (lower is better)")
    ax.set_ylabel("top-1 % (higher is better)" if has_acc else "size MB")
    ax.set_title("accuracy vs latency" if has_acc else "size vs latency (no --data: no accuracy)")
    ax.grid(alpha=0.3)
    err = [[0] * len(bars), [(r.get("p90_ms") or r["p50_ms"]) - r["p50_ms"] for r in bars]]
    drawn = bx.barh([r["name"] for r in bars], [r["p50_ms"] for r in bars], xerr=err, capsize=3,
                    color=[DEVICE_COLOR if is_device_row(r) else colors.get(r.get("backend"), "#d62728") for r in bars])
    for patch, r in zip(drawn.patches, bars):
        patch.set_hatch("//" if is_device_row(r) else None)
    bx.invert_yaxis()
    bx.set_xlabel("latency ms (bar p50, whisker p90" + ("; hatched: on the device)" if len(bars) > len(pts) else ")"))
    bx.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(r: dict[str, Any], key: str, fmt: str) -> str:
    v = r.get(key)
    if v is None:
        return "—"
    return fmt.format(v) if not isinstance(v, str) else v


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    lines = [f"# edgevit report: {run['model']['name']}", "",
             f"- command: `{run.get('command', '')}`", f"- created: {run.get('created')}",
             f"- data: {run.get('data') or '(none: no accuracy)'} ({run.get('split')})",
             f"- input: {run['data_config']['input_size']}", *_prune_line(run), "",
             "| " + " | ".join(h for _, h, _ in COLUMNS) + " | Pareto |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for r in data["rows"]:
        lines.append("| " + " | ".join(_fmt(r, k, f) for k, _, f in COLUMNS) + f" | {'★' if r.get('pareto') else ''} |")
    lines += sections_markdown(data.get("sections", {}))
    lines += device_markdown(data.get("device", []))
    return "\n".join(lines) + "\n"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em} img{max-width:100%;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{padding:.35em .7em;border-bottom:1px solid #e5e5e5;text-align:right}
td:first-child,th:first-child{text-align:left} th{background:#f6f6f6}
tr.pareto td{background:#eefbea;font-weight:600}
.note{color:#666;font-size:.9em} .headline{font-size:1.1em} h2{font-size:1.2em}"""


def html_page(data: dict[str, Any], png: Path | None) -> str:
    run = data["run"]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    body = "".join(
        f"<tr class='{'pareto' if r.get('pareto') else ''}'>"
        + "".join(f"<td>{html.escape(_fmt(r, k, f))}</td>" for k, _, f in COLUMNS) + "</tr>" for r in data["rows"])
    img = ""
    if png is not None:
        b64 = base64.b64encode(png.read_bytes()).decode()
        img = f"<img alt='accuracy vs latency' src='data:image/png;base64,{b64}'>"
    train = ""
    if data["training"]:
        last = data["training"][-1]
        curve = training_svg(data["training"])
        train = (f"<h2>Training</h2><p>Trained here for {last.get('epoch', 0) + 1} epoch(s): final val top-1 "
                 f"{last.get('val_top1', float('nan')):.2f} %, train loss {last.get('train_loss', float('nan')):.3f}."
                 f"</p>{curve}")
    facts = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in [
        ("model", f"{run['model']['name']} ({run.get('params', 0) / 1e6:.2f} M params)"),
        *([("token pruning", _prune_line(run)[0][len("- token pruning: "):])] if run.get("prune") else []),
        ("input", run["data_config"]["input_size"]), ("data", f"{run.get('data') or 'none'} / {run.get('split')}"),
        ("command", run.get("command")), ("created", run.get("created")),
        ("versions", ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()))])
    first = data["rows"][0] if data["rows"] else {}
    sections = sections_html(data.get("sections", {})) + device_html(data.get("device", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgevit report</title><style>{STYLE}</style>
</head><body>
<h1>edgevit report: {html.escape(run['model']['name'])}</h1>
<p class="headline">{html.escape(headline(data['rows']))}</p>
{img}
<table><tr>{head}</tr>{body}</table>
<p class="note">Green rows are on the Pareto front (no other artifact is both faster and at least as accurate).
Drop and agreement compare each artifact with the float PyTorch model on the same images; latency is batch
{first.get('batch', '?')}, {first.get('threads', '?')} thread(s), after warm-up. Peak MB is the resident
memory that loading and running an artifact added (for PyTorch eager, whose model was already loaded, running
only).</p>
{sections}{train}<ul class="note">{facts}</ul></body></html>"""


def headline(rows: list[dict[str, Any]]) -> str:
    """One sentence a reader takes away: the fastest artifact, and the fastest that loses nothing."""
    arts = [r for r in rows if r["name"] != "pytorch-eager" and "p50_ms" in r and not is_device_row(r)]
    if not arts:
        return "No benchmark rows yet: run `edgevit bench` on the artifacts."
    fast = min(arts, key=lambda r: r["p50_ms"])
    text = f"Fastest: {fast['name']} ({fast.get('runtime_precision')}) at {fast['p50_ms']:.2f} ms p50"
    if "speedup_vs_eager" in fast:
        text += f", {fast['speedup_vs_eager']:.2f}× PyTorch eager"
    if "top1_drop_pts" in fast:
        drop = fast["top1_drop_pts"]
        text += (f", {abs(drop):.2f} pts top-1 {'below' if drop > 0 else 'above'} the float model" if drop
                 else ", same top-1 as the float model")
        exact = [r for r in arts if r.get("agreement_pct") == 100.0]
        if exact and min(exact, key=lambda r: r["p50_ms"]) is not fast:
            best = min(exact, key=lambda r: r["p50_ms"])
            text += (f". Fastest with every prediction equal to the float model's: {best['name']} "
                     f"at {best['p50_ms']:.2f} ms ({best.get('speedup_vs_eager', 0):.2f}×)")
    return text + "."


def training_svg(history: list[dict[str, Any]], w: int = 520, h: int = 160) -> str:
    """A small inline SVG of validation top-1 per epoch (no extra image file to lose)."""
    pts = [(r["epoch"], r["val_top1"]) for r in history if "val_top1" in r]
    if len(pts) < 2:
        return ""
    n, top = max(e for e, _ in pts) or 1, max(100.0, max(v for _, v in pts))
    xy = " ".join(f"{40 + (w - 60) * e / n:.1f},{h - 25 - (h - 45) * v / top:.1f}" for e, v in pts)
    return (f"<svg width='{w}' height='{h}' role='img' aria-label='validation top-1 per epoch'>"
            f"<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{xy}'/>"
            f"<line x1='40' y1='{h - 25}' x2='{w - 20}' y2='{h - 25}' stroke='#999'/>"
            f"<text x='40' y='{h - 8}' font-size='11'>epoch 1</text>"
            f"<text x='{w - 70}' y='{h - 8}' font-size='11'>epoch {n + 1}</text>"
            f"<text x='2' y='{h - 25 - (h - 45) * pts[-1][1] / top:.0f}' font-size='11'>{pts[-1][1]:.0f}%</text>"
            f"<text x='{w / 2 - 60:.0f}' y='14' font-size='11'>validation top-1 per epoch</text></svg>")


def summary_table(rows: list[dict[str, Any]]):
    """The report's table for the terminal (rich)."""
    from rich.table import Table

    keys = [c for c in COLUMNS if c[0] in ("name", "runtime_precision", "top1", "top1_drop_pts",
                                           "agreement_pct", "p50_ms", "speedup_vs_eager")]
    t = Table(title="edgevit run", min_width=60)
    for i, (_, h, _) in enumerate(keys):
        t.add_column(h, no_wrap=True, justify="left" if i < 2 else "right")
    for r in rows:
        t.add_row(*[_fmt(r, k, f) for k, _, f in keys], style="bold green" if r.get("pareto") else None)
    return t


def write_report(run_dir: Path) -> Path:
    """Write report.json, report.md, report.html and plot.png into ``run_dir``; return the HTML path."""
    run_dir = Path(run_dir)
    data = collect(run_dir)
    png = plot(data["rows"], f"{data['run']['model']['name']} @ {data['run']['data_config']['input_size'][-1]}px",
               run_dir / "plot.png")
    write_json(run_dir / "report.json", data)
    write_bytes(run_dir / "report.md", markdown(data).encode())
    write_bytes(run_dir / "report.html", html_page(data, png).encode())
    return run_dir / "report.html"


def print_summary(run_dir: Path) -> None:
    from ..progress import console

    data = collect(run_dir)
    if data["rows"]:
        console.print(summary_table(data["rows"]))
        console.print(headline(data["rows"]), highlight=False)
