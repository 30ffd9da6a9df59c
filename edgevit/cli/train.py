"""Training commands: train, distill, run (a recipe), quickstart."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional

import typer

from ..progress import console as err
from .common import fresh, friendly


def register(app: typer.Typer) -> None:
    for fn in (train, distill, run, quickstart):
        app.command(fn.__name__)(friendly(fn))


# The options train and distill share: one table, put into each command's signature (typer reads it).
SHARED = [
    ("data", str, typer.Option(..., help="training images: ImageFolder (train/ and val/ sub-folders or one folder), CIFAR folder, or 'digits'")),
    ("split", str, typer.Option("val", help="the split to evaluate on each epoch: val | test")),
    ("num_classes", Optional[int], typer.Option(None, help="classifier size (must match the data's classes)")),
    ("img_size", Optional[int], typer.Option(None, help="input size, e.g. 32 for CIFAR")),
    ("patch_size", Optional[int], typer.Option(None, help="patch size, e.g. 4 at 32 px")),
    ("checkpoint", Optional[Path], typer.Option(None, help="start from these weights (.pth/.safetensors)")),
    ("pretrained", bool, typer.Option(False, help="start from timm's hub weights (needs internet)")),
    ("out_dir", Optional[Path], typer.Option(None, "--out", "-o", help="run directory (default runs/train-<model>)")),
    ("resume", bool, typer.Option(False, help="continue the run in --out from its last finished epoch")),
    ("exist_ok", bool, typer.Option(False, help="write into an existing --out")),
    ("epochs", Optional[int], typer.Option(None, help="epochs (default 5, or the recipe's)")),
    ("batch_size", Optional[int], typer.Option(None, help="batch size per process")),
    ("lr", Optional[float], typer.Option(None, help="peak learning rate (DeiT: 5e-4 × global batch / 512)")),
    ("val_fraction", float, typer.Option(0.2, help="hold-out fraction for data without its own val split")),
    ("seed", Optional[int], typer.Option(None, help="seed of the data split and of training (default 0, or the recipe's)")),
    ("recipe", Optional[Path], typer.Option(None, help="take the training options from this recipe's train: section")),
    ("sets", List[str], typer.Option([], "--set", help="any training option as KEY=VALUE, e.g. --set mixup=0.8 --set ema_decay=0.9999")),
]
DISTILL = [
    ("teacher", Optional[str], typer.Option(None, help="teacher: zoo/timm name (e.g. resnet18_cifar, regnety_160); required unless the --recipe names one")),
    ("teacher_checkpoint", Optional[Path], typer.Option(None, help="the teacher's weights (else timm's hub weights)")),
    ("student", str, typer.Option("deit_tiny_distilled", help="student with a distillation token")),
    ("distillation", Optional[str], typer.Option(None, help="hard | soft | none (default hard, or the recipe's)")),
    ("alpha", Optional[float], typer.Option(None, help="weight of the distillation term (hard 0.5, soft 0.1)")),
    ("tau", Optional[float], typer.Option(None, help="soft-distillation temperature (DeiT: 3.0)")),
]
TRAIN = [("model", str, typer.Option(..., "--model", "-m", help="zoo short name or timm name"))]


def _with_options(*tables):
    """Give a ``**kw`` command the typer options of ``tables`` as its signature."""
    def wrap(fn):
        fn.__signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                                                annotation=kind)
                                              for table in tables for name, kind, opt in table])
        return fn
    return wrap


def _fit(verb, model: str, kw: dict, **given) -> None:
    """Train ``model`` with the shared options in ``kw`` and the training options ``given``."""
    from .. import api

    resume, out_dir = kw["resume"], kw["out_dir"]
    cfg = api.train_config(kw["recipe"], kw["sets"], out_dir if resume else None, model, epochs=kw["epochs"],
                           batch_size=kw["batch_size"], lr=kw["lr"], seed=kw["seed"], **given)
    spec = api.ModelSpec(name=model, num_classes=kw["num_classes"], img_size=kw["img_size"],
                         patch_size=kw["patch_size"], checkpoint=str(kw["checkpoint"]) if kw["checkpoint"] else None,
                         pretrained=kw["pretrained"] and not kw["checkpoint"])
    out_path = out_dir or (fresh(Path("runs") / f"train-{model}") if not resume else None)
    if out_path is None:
        raise typer.BadParameter("--resume needs the --out of the run to continue")
    verb(spec, cfg, kw["data"], out_path, split=kw["split"], val_fraction=kw["val_fraction"], resume=resume,
         exist_ok=kw["exist_ok"])
    weights = Path(out_path) / "model" / "weights.safetensors"
    sizes = "".join(f" --{k.replace('_', '-')} {kw[k]}" for k in ("num_classes", "img_size", "patch_size") if kw[k])
    err.print(f"[bold]weights:[/] {weights}  (export: edgevit export --model {model} --checkpoint {weights}{sizes})",
              highlight=False)


@_with_options(TRAIN, SHARED)
def train(**kw):
    """Supervised training (teachers, fine-tuning, baselines) with DeiT's recipe from timm's parts.

    Checkpoints every epoch (--resume continues); many GPUs with torchrun:

        torchrun --nproc_per_node 4 -m edgevit train --model deit_small --data imagenet --recipe recipes/deit_small_imagenet.yaml
    """
    from .. import api

    _fit(api.train, kw.pop("model"), kw)


@_with_options(DISTILL, SHARED)
def distill(**kw):
    """DeiT distillation: a frozen teacher trains the student's distillation token (hard, soft or none).

        edgevit distill --teacher resnet18_cifar --teacher-checkpoint runs/teacher/model/weights.safetensors \
            --student deit_tiny_distilled --distillation hard --data cifar-10-batches-py --img-size 32 --patch-size 4 --num-classes 10
    """
    from .. import api

    defaults = not kw["recipe"] and not kw["resume"]  # otherwise the recipe's or the run's options stand
    kind = kw["distillation"] or ("hard" if defaults else None)
    alpha = kw["alpha"] if kw["alpha"] is not None or kind != "soft" or not defaults else 0.1
    ckpt = kw["teacher_checkpoint"]
    _fit(api.distill, kw["student"], kw, distillation=kind, teacher=kw["teacher"],
         teacher_checkpoint=str(ckpt) if ckpt else None, alpha=alpha, tau=kw["tau"])


def run(
    recipe: Path = typer.Argument(..., help="a recipe YAML (see recipes/)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="overrides the recipe's 'out'"),
    exist_ok: bool = typer.Option(False, help="write into an existing output directory"),
):
    """Run a recipe file: optional training, then export, validate, bench and report."""
    from .. import api

    api.run(recipe, out_dir, exist_ok=exist_ok)


def quickstart(
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="default runs/quickstart (-2, -3... if taken)"),
    exist_ok: bool = typer.Option(False, help="write into an existing output directory"),
    epochs: Optional[int] = typer.Option(None, min=1, help="training epochs (default: as many as fit a 5-minute run "
                                                           "on this machine, 3 to 20; it prints its estimate)"),
):
    """Offline demo: train a small DeiT-Ti on the embedded digits, export to every target, validate, bench, report."""
    from .. import api

    api.quickstart(out_dir or fresh(Path("runs/quickstart")), exist_ok=exist_ok, epochs=epochs)
