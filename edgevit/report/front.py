"""The search's accuracy-vs-latency picture and tables (`edgevit optimize`): every candidate as a
numbered point keyed to the table, latency on a log axis, each runtime's Pareto front as a line, the
budget and the dense models as reference lines, the winners starred."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..targets import TARGETS
from .plot import backend_color


def family_colours(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each runtime family in the colour of its targets' backend, as in the run report's plots."""
    out = {}
    for r in rows:
        t = TARGETS.get(r["target"])
        out.setdefault(r["family"], backend_color(t.backend) if t is not None else "tab:gray")
    return out


def front_plot(rows: list[dict[str, Any]], fronts: dict[str, list[int]], path: Path, title: str,
               budget: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    colours = family_colours(rows)
    by_n = {r["n"]: r for r in rows}
    scored = [r for r in rows if r.get("drop_pts") is not None]
    for r in scored:
        color = colours[r["family"]]
        lo, hi = r["drop_ci95_pts"]
        ax.errorbar(r["p50_ms"], r["drop_pts"], yerr=[[r["drop_pts"] - lo], [hi - r["drop_pts"]]], fmt="none",
                    ecolor=color, alpha=0.25, lw=1)
        ax.scatter(r["p50_ms"], r["drop_pts"], s=160 if r.get("winner") else 36,
                   marker="*" if r.get("winner") else ("s" if r.get("int8") else "o"),
                   facecolors=color if r["weights"] == "fine-tuned" or r.get("winner") else "white",
                   edgecolors=color, zorder=3)
        ax.annotate(str(r["n"]), (r["p50_ms"], r["drop_pts"]), textcoords="offset points", xytext=(4, 3), fontsize=7,
                    color=color)
    for fam, ns in fronts.items():
        pts = sorted((by_n[n] for n in ns), key=lambda p: p["p50_ms"])
        if pts:
            ax.step([p["p50_ms"] for p in pts], [p["drop_pts"] for p in pts], where="post",
                    color=colours.get(fam, "tab:gray"), lw=1.5, alpha=0.8)
        dense = [r for r in rows if r["family"] == fam and r["prune"] == "dense" and not r.get("int8")]
        if dense:
            ax.axvline(dense[0]["p50_ms"], color=colours.get(fam, "tab:gray"), ls=":", lw=1)
    unscored = [r for r in rows if r.get("drop_pts") is None]
    if unscored:
        ax.plot([r["p50_ms"] for r in unscored], [0] * len(unscored), "|", color="0.6", ms=10,
                transform=ax.get_xaxis_transform())
    ax.axhline(budget, color="tab:red", ls="--", lw=1)
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("latency p50, ms (log scale; batch 1, median of interleaved rounds)")
    ax.set_ylabel("top-1 drop vs the dense float model, points (95 % interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colours.get(f, "tab:gray"), lw=1.5, label=f"{f}: Pareto front") for f in fronts]
    handles += [Line2D([], [], color=colours.get(f, "tab:gray"), ls=":", label=f"{f}: dense float") for f in fronts]
    handles += [Line2D([], [], marker="o", ls="", mfc="white", mec="k", label="float target"),
                Line2D([], [], marker="s", ls="", mfc="white", mec="k", label="int8 target"),
                Line2D([], [], marker="o", ls="", mfc="k", mec="k", label="fine-tuned (filled)"),
                Line2D([], [], marker="*", ls="", mfc="k", mec="k", ms=12, label="winner"),
                Line2D([], [], color="tab:red", ls="--", label=f"budget {budget:g} pts")]
    if unscored:
        handles.append(Line2D([], [], marker="|", ls="", color="0.6", ms=10, label="timed, not scored"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _row(r: dict[str, Any]) -> str:
    spread = r.get("round_spread_pct")
    lat = f"{r['p50_ms']:.2f}" + (f" (±{spread / 2:.0f} %)" if spread is not None else "")
    h2h = r.get("h2h_vs_fastest")
    lat += f" | {h2h['ratio']:.3f} [{h2h['ci95'][0]:.3f}, {h2h['ci95'][1]:.3f}]" if h2h else " | —"
    if r.get("drop_pts") is None:
        acc = "— | — | —"
    else:
        lo, hi = r["drop_ci95_pts"]
        acc = (f"{r['drop_pts']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
               f"{r['only_dense_correct']} / {r['only_candidate_correct']} | {r['mcnemar_p']:.2f}")
    extra = "+" + "+".join(r["int8_extra"]) if r.get("int8_extra") else ""
    weights = r.get("weights") or "not scored"
    if r.get("finetune_epochs"):
        weights = f"fine-tuned {r['finetune_epochs']} ep"
    return (f"| {r['n']} | {r['prune']} | {r['target']}{extra} | {weights} | {lat} | "
            f"{acc} | {'**winner**' if r.get('winner') else ('yes' if r.get('meets_budget') else '')} |")


HEAD = ("| # | transforms | target | weights | p50 ms (round spread) | head to head ÷ fastest [95 %] | drop pts [95 %] "
        "| only dense / only this right | McNemar p | within budget |\n|---|---|---|---|---|---|---|---|---|---|")


def front_markdown(rows: list[dict[str, Any]], fronts: dict[str, list[int]], summary: dict[str, Any]) -> str:
    b, cpu = summary["budget"], summary["cpu"]
    out = [f"# edgevit optimize\n\nBudget: top-1 drop ≤ {b['max_drop_pts']:g} pts against the dense float model "
           f"({'95 % upper bound' if b['strict'] else 'point estimate'}), paired on {b['images']} held-out images "
           f"({b['split']} split). CPU: {cpu['cpu']}, {cpu['cores']} cores, {cpu['isa_label']}. "
           "Latency: batch 1, the median of the search's rounds (each artifact a block of runs); each runtime's "
           "fastest few by those were re-timed head to head (short interleaved rounds, random order), and they "
           "rank first, by that: the ÷ fastest column, with its paired 95 % interval. Numbers (#) key the plot "
           "(plot.png).\n"]
    by_n = {r["n"]: r for r in rows}
    for fam, ns in fronts.items():
        w = summary["winners"].get(fam)
        out.append(f"## {fam}: Pareto front\n")
        out.append(f"Winner: {w['candidate']} ({w['weights']}), {w['p50_ms']:.2f} ms.\n" if w
                   else "No candidate met the budget.\n")
        if w and w.get("confirm"):
            c = w["confirm"]
            out.append(f"On the {c['split']} split (never used to choose): drop {c['drop_pts']:+.2f} pts "
                       f"[{c['drop_ci95_pts'][0]:+.2f}, {c['drop_ci95_pts'][1]:+.2f}], "
                       f"{c['only_dense_correct']} / {c['only_candidate_correct']} images only dense / "
                       "only it right.\n")
        out += [HEAD, *(_row(by_n[n]) for n in ns), ""]
        out += _decision(summary.get("decisions", {}).get(fam))
    out += ["## Every candidate\n", HEAD, *(_row(r) for r in rows), ""]
    return "\n".join(out)


def _decision(d: dict[str, Any] | None) -> list[str]:
    """The head-to-head that chose the winner: each contender's figure, its paired ratio against the
    fastest with the 95 % interval, and the tie rule's answer in words."""
    if not d:
        return []
    out = ["### Speed decision\n"]
    if not d.get("ratios_vs_fastest"):
        return out + [f"{d['why']}.\n"]
    out += [f"The front was re-timed head to head ({d['ratios_vs_fastest'][0]['rounds']} short rounds, random order); "
            "candidates whose ratio's interval spans 1.0 are tied on speed, and the smallest drop among the tied "
            "wins.\n", "| candidate | head-to-head ms | ÷ fastest [95 %] | speed | drop pts | chosen |",
            "|---|---|---|---|---|---|"]
    for key, est, r, drop in zip(d["contenders"], d["estimates_ms"], d["ratios_vs_fastest"], d["drops"]):
        speed = "fastest" if key == d["fastest"] else ("tied" if key in d["tied"] else r["verdict"])
        out.append(f"| {key} | {est:.2f} | {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {speed} | "
                   f"{drop:+.2f} | {'**winner**' if key == d['winner'] else ''} |")
    return out + ["", f"{d['why']}.\n"]
