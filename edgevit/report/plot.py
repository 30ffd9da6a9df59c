"""The report's figure: accuracy against p50 latency (log axis, numbered points keyed to the table's
"#" column, PyTorch eager as reference lines, the Pareto front as a line) and a bar chart of p50 with
p90 whiskers, its axis clipped to the bulk of the data (clipped whiskers say their value)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..targets.registry import backends
from .device import is_device_row

DEVICE_COLOR = "#76b900"  # rows measured on an edge device (results/device.json)
OTHER_COLOR = "#d62728"
FRONT_COLOR = "#2ca02c"
REFERENCE = {"pytorch": ("PyTorch", "#7f7f7f")}  # rows of no target: PyTorch eager (and on the GPU)
# Colours for backends that declare none (Target.colour), given in order of registration: matplotlib's
# tab10, less the colours the figure uses for other things.
PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78")
EAGER = "pytorch-eager"
CLIP = 1.3  # the bar chart's axis ends at this multiple of the largest p50


def backend_styles() -> dict[str, tuple[str, str]]:
    """backend -> (legend label, colour): the registered targets' declarations (the backend's name where a
    label is missing; the next free palette colour where a colour is), and PyTorch's for reference rows."""
    declared = backends()
    used = {c for _, c in declared.values()} | {c for _, c in REFERENCE.values()}
    free = iter([c for c in PALETTE if c not in used])
    out = {b: (label, colour or next(free, OTHER_COLOR)) for b, (label, colour) in declared.items()}
    return {**out, **REFERENCE}


def backend_label(backend: str | None) -> str:
    return backend_styles().get(str(backend), (str(backend or "other"), OTHER_COLOR))[0]


def backend_color(backend: str | None) -> str:
    return backend_styles().get(str(backend), ("", OTHER_COLOR))[1]


def scatter_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scatter's points: this machine's timed rows but PyTorch eager (drawn as reference lines)."""
    return [r for r in rows if "p50_ms" in r and not is_device_row(r) and r["name"] != EAGER]


def number_points(rows: list[dict[str, Any]]) -> None:
    """Set ``plot_no`` (1, 2, ...) on every scatter point, in table order: the table's "#" column."""
    for i, r in enumerate(scatter_rows(rows), 1):
        r["plot_no"] = i


def bar_limit(rows: list[dict[str, Any]]) -> float:
    """Where the bar chart's latency axis ends: CLIP x the largest p50 (a p90 beyond it is clipped)."""
    return CLIP * max(r["p50_ms"] for r in rows)


def _scatter(ax, rows: list[dict[str, Any]]) -> None:
    pts = scatter_rows(rows)
    has_acc = bool(pts) and all("top1" in r for r in pts)
    y = (lambda r: r["top1"]) if has_acc else (lambda r: r.get("size_mb") or 0.0)
    for r in pts:
        ax.scatter(r["p50_ms"], y(r), s=110 if r.get("pareto") else 60, zorder=3, color=backend_color(r.get("backend")),
                   edgecolor="black" if r.get("pareto") else "white", linewidth=1.2)
    eager = next((r for r in rows if r["name"] == EAGER and "p50_ms" in r), None)
    if eager is not None:
        ax.axvline(eager["p50_ms"], color="#7f7f7f", ls=":", lw=1.2,
                   label=f"PyTorch eager p50 ({eager['p50_ms']:.1f} ms)")
        if has_acc and "top1" in eager:
            ax.axhline(eager["top1"], color="#7f7f7f", ls="--", lw=0.9,
                       label=f"float PyTorch top-1 ({eager['top1']:.1f} %)")
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["p50_ms"])
    if len(front) >= 2:  # one point is no line: then no legend entry either
        ax.plot([r["p50_ms"] for r in front], [y(r) for r in front], drawstyle="steps-post", color=FRONT_COLOR,
                lw=1.5, zorder=2, label="Pareto front (circled)")
    for backend in dict.fromkeys(r.get("backend") for r in pts):
        ax.scatter([], [], color=backend_color(backend), label=backend_label(backend))
    xs = [r["p50_ms"] for r in pts] + ([eager["p50_ms"]] if eager else [])
    ax.set_xscale("log")
    if xs:
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    _y_limits(ax, [y(r) for r in pts] + ([eager["top1"]] if has_acc and eager and "top1" in eager else []), has_acc)
    _number_labels(ax, [(r["p50_ms"], y(r), str(r.get("plot_no", ""))) for r in pts])
    ax.set_xlabel("p50 latency, ms, log scale (lower is better)")
    ax.set_ylabel("top-1 % (higher is better)" if has_acc else "size MB")
    ax.set_title("accuracy vs latency (numbers: the table's #)" if has_acc
                 else "size vs latency (no --data: no accuracy)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=7)


# where a point's number may go, nearest first (points): a ring round the point, then wider rings with a leader line
OFFSETS = [(round(r * math.cos(a), 1), round(r * math.sin(a), 1)) for r in (10, 18, 26, 34)
           for a in (math.pi / 4 * k + (0.4 if r > 10 else 0) for k in range(8))]


def _number_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Each point's number beside it, at the nearest offset clear of the numbers already placed (axis
    limits must be set: positions are compared on screen); a number set further out gets a leader line."""
    placed: list[tuple[float, float]] = []
    scale = ax.figure.dpi / 72.0
    for x, yv, text in points:
        px, py = ax.transData.transform((x, yv))
        dx, dy = next(((dx, dy) for dx, dy in OFFSETS
                       if all(abs(px + dx * scale - qx) > 10 * scale or abs(py + dy * scale - qy) > 8 * scale
                              for qx, qy in placed)), OFFSETS[0])
        placed.append((px + dx * scale, py + dy * scale))
        far = dx * dx + dy * dy > 150
        ax.annotate(text, (x, yv), textcoords="offset points", xytext=(dx, dy), fontsize=7 if far else 8, zorder=4,
                    ha="center", va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#888"} if far else None)


def _y_limits(ax, ys: list[float], has_acc: bool) -> None:
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if not has_acc:
        ax.set_ylim(0, hi * 1.15 or 1.0)
        return
    pad = max(0.0, 2.0 - (hi - lo)) / 2  # at least 2 points of top-1 on the axis: no magnified noise
    margin = max(0.5, 0.07 * (hi - lo))  # room for the numbers above the top point
    ax.set_ylim(max(0.0, lo - pad - margin), min(100.0, hi + pad + margin))


def _bars(bx, rows: list[dict[str, Any]]) -> None:
    bars = [r for r in rows if "p50_ms" in r]
    limit = bar_limit(bars)
    p90 = [max(r.get("p90_ms") or r["p50_ms"], r["p50_ms"]) for r in bars]
    err = [[0] * len(bars), [min(p, limit) - r["p50_ms"] for p, r in zip(p90, bars)]]
    labels = [f"{r['plot_no']}  {r['name']}" if r.get("plot_no") else r["name"] for r in bars]
    colors = [DEVICE_COLOR if is_device_row(r) else backend_color(r.get("backend")) for r in bars]
    drawn = bx.barh(labels, [r["p50_ms"] for r in bars], xerr=err, capsize=3, color=colors)
    for i, (patch, r, p) in enumerate(zip(drawn.patches, bars, p90)):
        patch.set_hatch("//" if is_device_row(r) else None)
        if p > limit:  # clipped whisker: an arrow at the edge and the value in words
            bx.annotate(f"p90 = {p:.0f} ms", xy=(limit, i), xytext=(-4, 7), textcoords="offset points",
                        ha="right", fontsize=7, color="#b00")
            bx.plot([limit], [i], marker=">", color="#b00", ms=6, clip_on=False)
    bx.set_xlim(0, limit)
    bx.invert_yaxis()
    bx.tick_params(axis="y", labelsize=7 if len(bars) > 15 else 9)
    bx.set_xlabel("latency ms (bar p50, whisker p90; ▶ p90 beyond the axis)")
    bx.grid(axis="x", alpha=0.3)
    for backend in dict.fromkeys(r.get("backend") for r in bars if not is_device_row(r)):
        bx.bar(0, 0, width=0, color=backend_color(backend), label=backend_label(backend))
    if any(is_device_row(r) for r in bars):
        bx.bar(0, 0, width=0, color=DEVICE_COLOR, hatch="//", label="on the device (hatched)")
    bx.legend(loc="lower right", fontsize=7)


def figure(rows: list[dict[str, Any]], title: str):
    """The report's figure (matplotlib, Agg), or None when no row was timed. Call :func:`number_points` first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any("p50_ms" in r for r in rows):
        return None
    n_bars = sum("p50_ms" in r for r in rows)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, max(4.8, 1.5 + 0.24 * n_bars)),
                                 gridspec_kw={"width_ratios": [3, 2]})
    _scatter(ax, rows)
    _bars(bx, rows)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Save :func:`figure` as ``path`` (PNG); None when no row was timed."""
    fig = figure(rows, title)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
