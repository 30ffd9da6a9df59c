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
from .plot import DEVICE_COLOR, EAGER, number_points, plot
from .sections import (
    chance_warning,
    cpu_line,
    drop_cell,
    drop_text,
    local_rows,
    noise_warning,
    noisy_rows,
    only_cell,
    precision_note,
    sections_html,
    sections_markdown,
    target_sections,
    warnings,
)
from .sections import load_json as _load

__all__ = ["DEVICE_COLOR", "collect", "headline", "mark_pareto", "plot", "print_summary", "write_report"]

COLUMNS = [  # (key, header, format) of the plain cells; drops, precision and "#" have their own
    ("name", "artifact", "{}"), ("runtime_precision", "precision", "{}"), ("size_mb", "size MB", "{:.1f}"),
    ("top1", "top-1 %", "{:.2f}"), ("top1_drop_pts", "drop pts vs float [95% CI]", "{:+.2f}"),
    ("only_float_correct", "only float / only artifact right", "{}"), ("agreement_pct", "agree %", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"), ("p90_ms", "p90 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
    ("throughput_ips", "img/s", "{:.1f}"), ("speedup_vs_eager", "× eager", "{:.2f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
]
DENSE_COLUMNS = [("top1_drop_vs_dense_pts", "drop pts vs dense [95% CI]"),
                 ("only_dense_correct", "only dense / only artifact right")]
DROP_NOTE = ("Drops are in top-1 points with their paired 95 % interval, from the images only one of the two "
             "models gets right (counted beside them). \"vs float\": the artifact against the float model it was "
             "exported from (export fidelity).")
DENSE_NOTE = (" \"vs dense\" (pruned artifacts): against the dense, unpruned model on the same images (what "
              "pruning cost).")


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
    number_points(ordered)  # the plot's point numbers: the table's "#" column
    devices = device_rows(run_dir)
    history = [json.loads(line) for line in (run_dir / "model" / "history.jsonl").read_text().splitlines()
               if line.strip()] if (run_dir / "model" / "history.jsonl").exists() else []
    all_rows = ordered + devices
    return {"run": run, "rows": all_rows, "training": history, "sections": target_sections(run_dir),
            "device": [device_facts(r) for r in devices], "cpu": cpu_line(all_rows),
            "warnings": warnings(all_rows), "notes": [n for n in map(precision_note, all_rows) if n]}


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


def _fmt(r: dict[str, Any], key: str, fmt: str) -> str:
    v = r.get(key)
    if v is None:
        return "—"
    return fmt.format(v) if not isinstance(v, str) else v


def _has_dense(rows: list[dict[str, Any]]) -> bool:
    return any("top1_drop_vs_dense_pts" in r for r in rows)


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    if key == "name":
        return r["name"] + (" (noisy)" if (r.get("noise") or {}).get("noisy") else "")
    if key == "runtime_precision":
        run, saved = r.get("runtime_precision"), r.get("precision")
        differs = run and saved and not str(run).startswith(str(saved))  # "int8/fp32" of an int8 artifact: same
        return f"{run} (saved {saved})" if differs else str(run or saved or "—")
    if key in ("top1_drop_pts", "top1_drop_vs_dense_pts"):
        return drop_cell(r, "dense" if "dense" in key else "")
    if key in ("only_float_correct", "only_dense_correct"):
        return only_cell(r, "dense" if "dense" in key else "")
    return _fmt(r, key, fmt)


def _number(r: dict[str, Any]) -> str:
    """The row's point number in the plot; "ref" for PyTorch eager (its reference lines); "—" for no point."""
    return str(r["plot_no"]) if r.get("plot_no") else "ref" if r["name"] == EAGER and "p50_ms" in r else "—"


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The main table: headers and cells, "#" (the plot's point number) first."""
    cols = list(COLUMNS)
    if _has_dense(rows):
        at = next(i for i, c in enumerate(cols) if c[0] == "agreement_pct")
        cols[at:at] = [(k, h, "") for k, h in DENSE_COLUMNS]
    body = [[_number(r)] + [_cell(r, k, f) for k, _, f in cols] + ["★" if r.get("pareto") else ""] for r in rows]
    return ["#"] + [h for _, h, _ in cols] + ["Pareto"], body


def _classes_line(run: dict[str, Any], shown: int = 20) -> list[str]:
    """A zero-shot classifier's labels (all of them in run.json and report.json)."""
    names = run.get("classes")
    if not names:
        return []
    more = f", … ({len(names) - shown} more in report.json)" if len(names) > shown else ""
    src = ((run.get("model", {}).get("extra") or {}).get("zeroshot") or {}).get("source", {}).get("model")
    return [f"- classes ({len(names)}, zero-shot{f' from {src}' if src else ''}): "
            + ", ".join(names[:shown]) + more]


def _notes(data: dict[str, Any]) -> list[str]:
    return data.get("notes", []) + [DROP_NOTE + (DENSE_NOTE if _has_dense(data["rows"]) else "")]


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    head, body = table(data["rows"])
    # "#" is the last column here: a row's first cells stay its name and precision
    head, body = head[1:] + head[:1], [cells[1:] + cells[:1] for cells in body]
    lines = [f"# edgevit report: {run['model']['name']}", "",
             f"- command: `{run.get('command', '')}`", f"- created: {run.get('created')}",
             f"- data: {run.get('data') or '(none: no accuracy)'} ({run.get('split')})",
             f"- input: {run['data_config']['input_size']}", *_prune_line(run), *_classes_line(run),
             f"- {data.get('cpu') or cpu_line(data['rows'])}", ""]
    lines += [line for w in data.get("warnings", []) for line in (f"> **{w}**", "")]
    lines += [headline(data["rows"]), "", "![accuracy vs latency; points numbered as the # column](plot.png)", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += [""] + [f"- {n}" for n in _notes(data)]
    lines += sections_markdown(data.get("sections", {}))
    lines += device_markdown(data.get("device", []))
    return "\n".join(lines) + "\n"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em} img{max-width:100%;height:auto;border:1px solid #ddd;border-radius:6px}
.scroll{overflow-x:auto;max-width:100%} table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{padding:.35em .7em;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left} th{background:#f6f6f6}
tr.pareto td{background:#eefbea;font-weight:600}
.warn{background:#fff4e5;border-left:4px solid #e67e00;padding:.6em 1em;margin:1em 0;font-weight:600}
.note{color:#666;font-size:.9em} .headline{font-size:1.1em} h2{font-size:1.2em}"""


def _scrolling(page: str) -> str:
    """Every table in a horizontally scrolling box: a narrow window scrolls it instead of cutting it off."""
    return page.replace("<table>", "<div class='scroll'><table>").replace("</table>", "</table></div>")


def _html_table(rows: list[dict[str, Any]]) -> str:
    head, body = table(rows)
    cells = "".join(f"<tr class='{'pareto' if r.get('pareto') else ''}'>"
                    + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for r, row in zip(rows, body))
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _training_html(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    last = history[-1]
    return (f"<h2>Training</h2><p>Trained here for {last.get('epoch', 0) + 1} epoch(s): final val top-1 "
            f"{last.get('val_top1', float('nan')):.2f} %, train loss {last.get('train_loss', float('nan')):.3f}."
            f"</p>{training_svg(history)}")


def _facts_html(run: dict[str, Any], cpu: str) -> str:
    return "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in [
        ("model", f"{run['model']['name']} ({run.get('params', 0) / 1e6:.2f} M params)"),
        *([("token pruning", _prune_line(run)[0][len("- token pruning: "):])] if run.get("prune") else []),
        *([("classes", _classes_line(run)[0][len("- classes "):])] if run.get("classes") else []),
        ("input", run["data_config"]["input_size"]), ("data", f"{run.get('data') or 'none'} / {run.get('split')}"),
        ("CPU", cpu.split(": ", 1)[-1]), ("command", run.get("command")), ("created", run.get("created")),
        ("versions", ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()))])


def html_page(data: dict[str, Any], png: Path | None) -> str:
    run, rows = data["run"], data["rows"]
    img = ""
    if png is not None:
        b64 = base64.b64encode(png.read_bytes()).decode()
        img = (f"<img alt='accuracy vs latency, points numbered as the table&#39;s # column' "
               f"src='data:image/png;base64,{b64}'>")
    warns = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in data.get("warnings", []))
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in _notes(data))
    cpu = data.get("cpu") or cpu_line(rows)
    first = rows[0] if rows else {}
    sections = sections_html(data.get("sections", {})) + device_html(data.get("device", []))
    return _scrolling(f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>edgevit report</title><style>{STYLE}</style>
</head><body>
<h1>edgevit report: {html.escape(run['model']['name'])}</h1>
<p class="note">{html.escape(cpu)}</p>
{warns}<p class="headline">{html.escape(headline(rows))}</p>
{img}
{_html_table(rows)}
{notes}<p class="note">Green rows are on the Pareto front (no other artifact is both faster and at least as accurate).
# numbers the plot's points; PyTorch eager ("ref") is its dotted and dashed reference lines. Latency is batch
{first.get('batch', '?')}, {first.get('threads', '?')} thread(s), after warm-up. Peak MB is the resident
memory that loading and running an artifact added (for PyTorch eager, whose model was already loaded, running
only).</p>
{sections}{_training_html(data["training"])}<ul class="note">{_facts_html(run, cpu)}</ul></body></html>""")


def headline(rows: list[dict[str, Any]]) -> str:
    """One sentence a reader takes away: the fastest artifact, and the fastest that loses nothing; a warning
    instead when the latency was noisy (no speedup is claimed then)."""
    arts = [r for r in local_rows(rows) if r["name"] != EAGER]
    if not arts:
        return "No benchmark rows yet: run `edgevit bench` on the artifacts."
    if noisy_rows(rows):
        return str(noise_warning(rows))
    fast = min(arts, key=lambda r: r["p50_ms"])
    text = f"Fastest: {fast['name']} ({fast.get('runtime_precision')}) at {fast['p50_ms']:.2f} ms p50"
    text += f" / {fast['p90_ms']:.2f} ms p90" if fast.get("p90_ms") else ""
    if "speedup_vs_eager" in fast:
        text += f", {fast['speedup_vs_eager']:.2f}× PyTorch eager"
    if "top1_drop_vs_dense_pts" in fast:
        text += f", {drop_text(fast, 'dense')}; export fidelity: {drop_text(fast)}"
    elif "top1_drop_pts" in fast:
        text += f", {drop_text(fast)}"
    exact = [r for r in arts if r.get("agreement_pct") == 100.0]
    if exact and min(exact, key=lambda r: r["p50_ms"]) is not fast:
        best = min(exact, key=lambda r: r["p50_ms"])
        text += (f". Fastest with every prediction equal to the float model's: {best['name']} "
                 f"at {best['p50_ms']:.2f} ms ({best.get('speedup_vs_eager', 0):.2f}×)")
    if chance_warning(rows):
        text += " (but the float model is at chance level: these figures say nothing about accuracy)"
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

    head, body = table(rows)
    keep = [i for i, h in enumerate(head) if h in ("#", "artifact", "precision", "top-1 %", COLUMNS[4][1],
                                                  DENSE_COLUMNS[0][1], "p50 ms", "p90 ms", "× eager")]
    t = Table(title="edgevit run", min_width=60)
    for n, i in enumerate(keep):
        t.add_column(head[i], no_wrap=True, justify="left" if 0 < n < 3 else "right")
    for r, cells in zip(rows, body):
        t.add_row(*[cells[i] for i in keep], style="bold green" if r.get("pareto") else None)
    return t


def write_report(run_dir: Path, data: dict[str, Any] | None = None) -> Path:
    """Write report.json, report.md, report.html and plot.png into ``run_dir``; return the HTML path.
    ``data``: :func:`collect`'s, when the caller already collected it (an export writes, then prints it)."""
    run_dir = Path(run_dir)
    data = data if data is not None else collect(run_dir)
    png = plot(data["rows"], f"{data['run']['model']['name']} @ {data['run']['data_config']['input_size'][-1]}px",
               run_dir / "plot.png")
    write_json(run_dir / "report.json", data)
    write_bytes(run_dir / "report.md", markdown(data).encode())
    write_bytes(run_dir / "report.html", html_page(data, png).encode())
    return run_dir / "report.html"


def print_summary(run_dir: Path, data: dict[str, Any] | None = None) -> None:
    """The report's table, warnings and headline on the terminal (``data``: :func:`collect`'s, if at hand)."""
    from ..progress import console

    data = data if data is not None else collect(run_dir)
    if data["rows"]:
        console.print(summary_table(data["rows"]))
        for w in data["warnings"]:
            console.print(w, style="bold yellow", highlight=False)
        if (h := headline(data["rows"])) not in data["warnings"]:  # a noisy run's headline is its warning
            console.print(h, highlight=False)
