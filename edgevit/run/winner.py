"""What `edgevit optimize` leaves behind: every candidate (``candidates.json``), the Pareto front per
runtime (``front.md``), the accuracy-vs-latency plot, ``winner.yaml`` (a recipe that rebuilds the
winner from the checkpoint in one ``edgevit run``), the winners exported and validated, and
``optimize.json`` (the summary)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from ..data import eval_transform, load_split
from ..eval.machine import cpu_facts, isa_label
from ..eval.stats import Paired, paired, unpack
from ..manifest import atomic_path, write_json
from ..progress import say
from ..report.front import front_markdown, front_plot
from .artifacts import load_artifact
from .export import ExportOptions, run_export
from .search import Candidate, SearchError, pareto, search_options, speed


def rows_of(s, lat: dict[str, dict[str, Any]], best) -> list[dict[str, Any]]:
    """One row per candidate and weights tried (untuned, fine-tuned, with int8 fallbacks), plus one
    per candidate never scored (slower than its runtime's winner), numbered fastest first (as the search
    ranks them: :func:`edgevit.run.search.speed`)."""
    rows = []
    for c in s.cands:
        if c.key not in lat:
            continue
        base = {"prune": c.prune or "dense", "target": c.target, "int8": c.int8, "family": c.family, "key": c.key,
                "latency_prune": c.latency_prune or "dense", **lat[c.key]}
        scored = False
        for rec in s.log.of_kind("accuracy"):
            key = rec["key"]
            name, _, rest = key.partition("#")
            mine = name == c.key if c.int8 else name == f"{c.prune or 'dense'}|float"
            if not mine:
                continue
            tag, *extra = rest.split("+")
            p = paired(s.dense_correct, unpack(rec["correct"], rec["n"]))
            rows.append({**base, "weights": "fine-tuned" if tag.startswith("ft") else "as given", "tag": tag,
                         "finetune_epochs": int(tag[2:]) if tag.startswith("ft") else 0,
                         "int8_extra": extra, "meets_budget": s.meets(p), **_stat(p)})
            scored = True
        if not scored:
            rows.append({**base, "weights": None, "tag": None, "int8_extra": [], "meets_budget": None,
                         "not_scored": "slower than this runtime's winner (its accuracy could not change the "
                                       "answer), or int8 whose float twin misses the budget by over a point"})
    rows.sort(key=lambda r: (*speed(r), r.get("drop_pts") if r.get("drop_pts") is not None else 1e9))
    for i, r in enumerate(rows, 1):
        r["n"] = i
        for fam, b in best.items():
            if b is not None and fam == r["family"]:
                r["winner"] = r["key"] == b[0].key and r["tag"] == b[1]
    return rows


def _stat(p: Paired) -> dict[str, Any]:
    return {"drop_pts": p.drop_pts, "drop_ci95_pts": list(p.ci95_pts), "top1": p.top1, "dense_top1": p.ref_top1,
            "only_dense_correct": p.only_ref_correct, "only_candidate_correct": p.only_candidate_correct,
            "mcnemar_p": p.mcnemar_p, "images": p.images}


def recipe_for(s, c: Candidate, tag: str, extra: list[str]) -> dict[str, Any]:
    """A recipe (``edgevit run``) that rebuilds the winner from the original checkpoint: same
    transforms, the same fine-tune (seeded), the same target options."""
    spec, o = s.spec_rec, s.opts
    fine = s.log.get("finetune", f"{c.prune}#{tag[2:]}") if tag.startswith("ft") else None
    options = {"calib_size": o.calib_size, **search_options(c.target)} if c.int8 else {}
    for e in extra:
        options.update({"max_drop": o.max_drop} if e == "max_drop" else {"qat_epochs": o.qat_epochs})
    return {
        "model": {"name": spec.name, "checkpoint": spec.checkpoint,
                  "pretrained": bool(spec.pretrained and not spec.checkpoint),
                  "num_classes": spec.num_classes, "img_size": spec.img_size, "patch_size": spec.patch_size,
                  "extra": dict(spec.extra), "prune": c.prune, "finetune_epochs": fine["epochs"] if fine else 0,
                  "finetune_lr": fine["lr"] if fine else o.finetune_lr},
        "data": {"source": str(o.data), "split": o.report_split, "val_fraction": o.val_fraction,
                 "seed": o.seed, "holdout": o.holdout},
        "targets": [c.target], "options": options, "out": f"runs/winner-{c.family}",
    }


def write_recipe(path: Path, recipe: dict[str, Any], note: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"# {line}\n" for line in note.splitlines()) + yaml.safe_dump(recipe, sort_keys=False))
    return path


def export_winner(s, c: Candidate, tag: str, extra: list[str], recipe: dict[str, Any]) -> dict[str, Any]:
    """Export and validate the winner from the weights the search scored (no second fine-tune)."""
    o = s.opts
    out = o.out / f"winner-{c.family}"
    run_export(s.weights(c.prune, tag), ExportOptions(
        targets=[c.target], out=out, data=o.data, split=o.report_split, val_fraction=o.val_fraction,
        seed=o.seed, holdout=o.holdout, exist_ok=True, bench=True, threads=o.threads, options=dict(recipe["options"]),
        extra={"optimize": {"candidate": c.key, "weights": tag}, "dense_model": s.spec_rec.to_dict()}))
    art = out / "artifacts" / c.target
    res = {"run": str(out), "artifact": str(art)}
    if o.confirm_split:  # the paired comparison on images the search never chose on
        res["confirm"] = {"split": o.confirm_split, **_stat(confirm(s, art))}
    return res


def confirm(s, art: Path) -> Paired:
    from ..eval.validate import torch_predict

    ds = load_split(s.opts.data, s.opts.confirm_split, eval_transform(s.data_cfg), s.opts.val_fraction, s.opts.seed)
    _, runner, _, _ = load_artifact(art, s.opts.threads)
    res = s.compare_on({"dense": torch_predict(s.dense), "art": runner}, ds)
    y = res["dense"]["labels"]
    return paired(res["dense"]["logits"].argmax(1) == y, res["art"]["logits"].argmax(1) == y)


def finish(s, lat: dict[str, dict[str, Any]], best, decisions: dict[str, Any] | None = None) -> dict[str, Any]:
    o, t0 = s.opts, time.monotonic()
    rows = rows_of(s, lat, best)
    fronts = {fam: [r["n"] for r in pareto([(r["n"], r["drop_pts"], r) for r in rows
                                              if r["family"] == fam and r.get("drop_pts") is not None])]
              for fam in o.families}
    cpu = cpu_facts()
    summary: dict[str, Any] = {
        "budget": {"max_drop_pts": o.max_drop, "strict": o.strict, "split": o.split, "images": len(s.images)},
        "cpu": {**cpu, "isa_label": isa_label(cpu["isa"])}, "families": o.families, "fronts": fronts,
        "transforms": s.space, "finetunes": [{"prune": r["prune"], "seconds": r["seconds"], "epochs": r["epochs"]}
                                             for r in s.log.of_kind("finetune")],
        "winners": {}, "candidates": len({r["key"] for r in rows}), "rows": rows,
        "decisions": {fam: d for fam, d in (decisions or {}).items() if d is not None}}
    write_json(o.out / "candidates.json", rows)
    front_plot(rows, fronts, o.out / "plot.png", title=f"edgevit optimize: {', '.join(o.families)} on {cpu['cpu']} "
               f"({isa_label(cpu['isa'])})", budget=o.max_drop)
    for fam in o.families:
        if best[fam] is None:
            continue
        c, tag, p = best[fam]
        row = next(r for r in rows if r.get("winner") and r["family"] == fam)
        extra = row["int8_extra"]
        recipe = recipe_for(s, c, tag, extra)
        note = (f"Made by edgevit optimize: the fastest {fam} artifact within {o.max_drop:g} top-1 points of the dense "
                f"model\n({'95 % upper bound' if o.strict else 'point estimate'}): {c.key}, {row['p50_ms']:.2f} ms p50 "
                f"here, drop {p.text()}.\nRebuild it: edgevit run {o.out / ('winner-' + fam + '.yaml')}")
        path = write_recipe(o.out / f"winner-{fam}.yaml", recipe, note)
        if len(o.families) == 1:
            write_recipe(o.out / "winner.yaml", recipe, note)
        win = {"candidate": c.key, "weights": row["weights"], "int8_extra": extra, "row": row["n"],
               "p50_ms": row["p50_ms"], "recipe": str(path), **_stat(p)}
        d = summary["decisions"].get(fam)
        if d and d.get("tied"):  # re-timed head to head: its figure there, and whether it won a tie on accuracy
            i = d["contenders"].index(d["winner_key"])
            win.update(head_to_head_ms=d["estimates_ms"][i], tied_with=[k for k in d["tied"] if k != d["winner_key"]],
                       decision=d["why"])
        if o.export_winners:
            win.update(export_winner(s, c, tag, extra, recipe))
        summary["winners"][fam] = win
    summary["search_seconds"] = s.spent() + time.monotonic() - t0
    (o.out / "front.md").write_text(front_markdown(rows, fronts, summary))
    write_json(o.out / "optimize.json", summary)
    say("optimize: ", plain=f"wrote {o.out / 'optimize.json'}, {o.out / 'front.md'}, {o.out / 'plot.png'}")
    missing = [fam for fam in o.families if best[fam] is None]
    if missing:
        raise SearchError(*no_winner(s, rows, missing))
    return summary


def no_winner(s, rows: list[dict[str, Any]], missing: list[str]) -> tuple[str, str]:
    o = s.opts
    lines = []
    for fam in missing:
        scored = [r for r in rows if r["family"] == fam and r.get("drop_pts") is not None]
        key = (lambda r: r["drop_ci95_pts"][1]) if o.strict else (lambda r: r["drop_pts"])
        b = min(scored, key=key) if scored else None
        lines.append(f"{fam}: best found {b['key']} ({b['weights']}) drop {b['drop_pts']:+.2f} pts "
                     f"[{b['drop_ci95_pts'][0]:+.2f}, {b['drop_ci95_pts'][1]:+.2f}] at {b['p50_ms']:.2f} ms"
                     if b else f"{fam}: nothing was scored")
    held = "95 % upper bound" if o.strict else "point estimate"
    what = (f"no candidate is within --max-drop {o.max_drop:g} pts ({held}) "
            f"for {', '.join(missing)}; " + "; ".join(lines) + f". Every candidate is in {o.out / 'front.md'}")
    fix = ("raise --max-drop to the best found, or allow longer fine-tunes (--finetune-epochs, --max-finetunes) "
           "and more time (--time-budget)" + (", or leave out --strict" if o.strict else ""))
    return what, fix

