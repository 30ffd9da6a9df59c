"""``edgevit optimize``: search token reduction × int8 × fine-tune for the fastest artifact within a drop budget."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..progress import table
from .common import fresh, friendly, live_help, out


def register(app: typer.Typer) -> None:
    app.command("optimize", cls=live_help(transforms=transforms_help, target=target_help))(friendly(optimize))


def target_help() -> str:
    """``--target``' help: the runtimes (families) of the targets registered now, with their targets."""
    from ..targets.registry import families

    runtimes = "; ".join(f"{fam} ({', '.join(ts)})" for fam, ts in families().items())
    return f"runtimes to search, comma-separated, each with its float and int8 targets: {runtimes}"


def transforms_help() -> str:
    """``--transforms``' help: the forms and the default space, from the transforms registered now."""
    from ..run.search import default_space
    from ..transforms import forms

    space = "; ".join(p or "dense" for p in default_space(12, 196))
    return (f"transforms to try, ';'-separated, each {forms()} or several joined by '+' (e.g. "
            f"'evit:0.7;evit:0.5@2,5,8;tome:4'); default: every transform's search entries, for a 12-block ViT "
            f"of 196 patch tokens: {space}")


def optimize(
    model: str = typer.Option(..., "--model", "-m", help="zoo short name or timm name"),
    checkpoint: Optional[Path] = typer.Option(None, help="the trained float weights (.pth/.safetensors); else timm's hub weights (needs internet)"),
    data: str = typer.Option(..., help="labelled images: fine-tunes and calibration use its training part, accuracy its --split"),
    target: str = typer.Option("openvino", help="runtimes to search (shown with --help: target_help)"),
    max_drop: float = typer.Option(1.0, help="top-1 points the winner may lose against the dense float model"),
    strict: bool = typer.Option(False, help="hold the drop's 95 % upper bound to --max-drop (default: the point estimate)"),
    time_budget: Optional[float] = typer.Option(None, help="minutes for the whole search (resumed parts included); the best found so far wins when it runs out"),
    transforms: Optional[str] = typer.Option(None, help="transforms to try (shown with --help: transforms_help)"),
    finetune_epochs: int = typer.Option(2, help="epochs of each short fine-tune (distilled from the dense model); 0: none"),
    finetune_lr: float = typer.Option(2e-4, help="fine-tune learning rate"),
    max_finetunes: int = typer.Option(6, help="at most this many fine-tunes in all"),
    longer_finetune: float = typer.Option(2.0, help="a fine-tuned candidate still this many points over budget gets one fine-tune twice as long; 0: never"),
    num_classes: Optional[int] = typer.Option(None, help="classifier size (must match --checkpoint and --data)"),
    img_size: Optional[int] = typer.Option(None, help="input size, e.g. 32 for CIFAR"),
    patch_size: Optional[int] = typer.Option(None, help="patch size, e.g. 4 at 32 px"),
    split: str = typer.Option("val", help="the images the search chooses on: val (the data's own val/test split, or the --val-fraction carve: held out from the checkpoint's training, the fine-tunes and calibration), or holdout (a --holdout fraction of the training images, for a checkpoint that never trained on them)"),
    holdout: Optional[float] = typer.Option(None, help="fraction of the training images set aside for --split holdout (fine-tunes and calibration leave them out)"),
    confirm_split: Optional[str] = typer.Option(None, help="also validate the winners here, on images the search never chose on (e.g. test with --split holdout)"),
    val_fraction: float = typer.Option(0.2, help="hold-out fraction for data without its own val split"),
    calib_size: int = typer.Option(128, help="calibration images for int8 candidates"),
    rounds: int = typer.Option(3, help="interleaved timing rounds (the median is used; their spread is reported)"),
    iters: int = typer.Option(50, help="timed runs per artifact per round"),
    threads: Optional[int] = typer.Option(None, help="inference threads (default: the usable cores)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="search directory (default runs/optimize-<model>)"),
    resume: bool = typer.Option(False, help="continue the search in --out from its log (search.jsonl)"),
):
    """Find the fastest artifact for each runtime within an accuracy budget.

    Latency first: every candidate (dense and pruned models × the runtime's float and int8 targets) is
    exported and timed on this machine in interleaved rounds before any accuracy is spent. Then, fastest
    first, each candidate is compared with the dense float model on the held-out split (paired: the drop,
    its 95 % interval, the images only one gets right); only transforms with a candidate faster than the
    best so far are fine-tuned. Writes front.md (the Pareto front), plot.png, candidates.json,
    optimize.json, winner-<runtime>.yaml (`edgevit run` rebuilds the winner from the checkpoint) and the
    winners exported and validated. A killed search continues with --resume.

    Example: edgevit optimize --model deit_tiny --checkpoint w.safetensors --data ../cifar --img-size 32 --patch-size 4 --num-classes 10 --target openvino,onnx --max-drop 1 --time-budget 60
    """
    from .. import api

    spec = api.ModelSpec(model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         checkpoint=str(checkpoint) if checkpoint else None, pretrained=checkpoint is None)
    space = None if transforms is None else [t.strip() or None for t in transforms.split(";")]
    opts = api.OptimizeOptions(
        targets=[t.strip() for t in target.split(",") if t.strip()], data=data,
        out=out_dir or fresh(Path("runs") / f"optimize-{model}"), max_drop=max_drop, strict=strict,
        time_budget_min=time_budget, space=space, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
        max_finetunes=max_finetunes, longer_finetune_pts=longer_finetune, split=split, holdout=holdout,
        confirm_split=confirm_split, val_fraction=val_fraction,
        calib_size=calib_size, rounds=rounds, iters=iters, threads=threads, resume=resume)
    summary = api.optimize(spec, opts)
    t = table("runtime", "winner", "weights", "p50 ms", "drop pts [95 %]", "recipe", title="edgevit optimize")
    for fam, w in summary["winners"].items():
        lo, hi = w["drop_ci95_pts"]
        t.add_row(fam, w["candidate"], w["weights"], f"{w['p50_ms']:.2f}", f"{w['drop_pts']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                  w["recipe"])
    out.print(t)
    out.print(f"front and every candidate: {opts.out / 'front.md'}; plot: {opts.out / 'plot.png'}")
