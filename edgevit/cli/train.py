"""Training commands: train, distill, run (a recipe), quickstart."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..progress import console as err
from .common import fresh, friendly


def register(app: typer.Typer) -> None:
    for fn in (train, distill, run, quickstart):
        app.command(fn.__name__)(friendly(fn))


def _train_common(verb, model, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg) -> None:
    from .. import api

    spec = api.ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint)
    out_path = out_dir or (fresh(Path("runs") / f"train-{model}") if not resume else None)
    if out_path is None:
        raise typer.BadParameter("--resume needs the --out of the run to continue")
    verb(spec, cfg, data, out_path, split=split, val_fraction=val_fraction, resume=resume, exist_ok=exist_ok)
    weights = Path(out_path) / "model" / "weights.safetensors"
    err.print(f"[bold]weights:[/] {weights}  (export: edgevit export --model {model} --checkpoint {weights}"
              + "".join(f" --{k} {v}" for k, v in (("num-classes", num_classes), ("img-size", img_size),
                                                    ("patch-size", patch_size)) if v) + ")", highlight=False)


_MODEL_OPTS = dict(
    data=typer.Option(..., help="training images: ImageFolder (train/ and val/ sub-folders or one folder), CIFAR folder, or 'digits'"),
    split=typer.Option("val", help="the split to evaluate on each epoch: val | test"),
    num_classes=typer.Option(None, help="classifier size (must match the data's classes)"),
    img_size=typer.Option(None, help="input size, e.g. 32 for CIFAR"),
    patch_size=typer.Option(None, help="patch size, e.g. 4 at 32 px"),
    checkpoint=typer.Option(None, help="start from these weights (.pth/.safetensors)"),
    pretrained=typer.Option(False, help="start from timm's hub weights (needs internet)"),
    out_dir=typer.Option(None, "--out", "-o", help="run directory (default runs/train-<model>)"),
    resume=typer.Option(False, help="continue the run in --out from its last finished epoch"),
    exist_ok=typer.Option(False, help="write into an existing --out"),
    epochs=typer.Option(None, help="epochs (default 5, or the recipe's)"),
    batch_size=typer.Option(None, help="batch size per process"),
    lr=typer.Option(None, help="peak learning rate (DeiT: 5e-4 × global batch / 512)"),
    val_fraction=typer.Option(0.2, help="hold-out fraction for data without its own val split"),
    seed=typer.Option(None, help="seed of the data split and of training (default 0, or the recipe's)"),
    recipe=typer.Option(None, help="take the training options from this recipe's train: section"),
    sets=typer.Option([], "--set", help="any training option as KEY=VALUE, e.g. --set mixup=0.8 --set ema_decay=0.9999"),
)



def train(
    model: str = typer.Option(..., "--model", "-m", help="zoo short name or timm name"),
    data: str = _MODEL_OPTS["data"], split: str = _MODEL_OPTS["split"],
    num_classes: Optional[int] = _MODEL_OPTS["num_classes"], img_size: Optional[int] = _MODEL_OPTS["img_size"],
    patch_size: Optional[int] = _MODEL_OPTS["patch_size"], checkpoint: Optional[Path] = _MODEL_OPTS["checkpoint"],
    pretrained: bool = _MODEL_OPTS["pretrained"], out_dir: Optional[Path] = _MODEL_OPTS["out_dir"],
    resume: bool = _MODEL_OPTS["resume"], exist_ok: bool = _MODEL_OPTS["exist_ok"],
    epochs: Optional[int] = _MODEL_OPTS["epochs"], batch_size: Optional[int] = _MODEL_OPTS["batch_size"],
    lr: Optional[float] = _MODEL_OPTS["lr"], val_fraction: float = _MODEL_OPTS["val_fraction"],
    seed: Optional[int] = _MODEL_OPTS["seed"], recipe: Optional[Path] = _MODEL_OPTS["recipe"],
    sets: List[str] = _MODEL_OPTS["sets"],
):
    """Supervised training (teachers, fine-tuning, baselines) with DeiT's recipe from timm's parts.

    Checkpoints every epoch (--resume continues); many GPUs with torchrun:

        torchrun --nproc_per_node 4 -m edgevit train --model deit_small --data imagenet --recipe recipes/deit_small_imagenet.yaml
    """
    from .. import api

    cfg = api.train_config(recipe, sets, out_dir if resume else None, model, epochs=epochs, batch_size=batch_size,
                           lr=lr, seed=seed)
    _train_common(api.train, model, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg)


def distill(
    teacher: Optional[str] = typer.Option(None, help="teacher: zoo/timm name (e.g. resnet18_cifar, regnety_160); "
                                          "required unless the --recipe names one"),
    teacher_checkpoint: Optional[Path] = typer.Option(None, help="the teacher's weights (else timm's hub weights)"),
    student: str = typer.Option("deit_tiny_distilled", help="student with a distillation token"),
    distillation: Optional[str] = typer.Option(None, help="hard | soft | none (default hard, or the recipe's)"),
    alpha: Optional[float] = typer.Option(None, help="weight of the distillation term (hard 0.5, soft 0.1)"),
    tau: Optional[float] = typer.Option(None, help="soft-distillation temperature (DeiT: 3.0)"),
    data: str = _MODEL_OPTS["data"], split: str = _MODEL_OPTS["split"],
    num_classes: Optional[int] = _MODEL_OPTS["num_classes"], img_size: Optional[int] = _MODEL_OPTS["img_size"],
    patch_size: Optional[int] = _MODEL_OPTS["patch_size"], checkpoint: Optional[Path] = _MODEL_OPTS["checkpoint"],
    pretrained: bool = _MODEL_OPTS["pretrained"], out_dir: Optional[Path] = _MODEL_OPTS["out_dir"],
    resume: bool = _MODEL_OPTS["resume"], exist_ok: bool = _MODEL_OPTS["exist_ok"],
    epochs: Optional[int] = _MODEL_OPTS["epochs"], batch_size: Optional[int] = _MODEL_OPTS["batch_size"],
    lr: Optional[float] = _MODEL_OPTS["lr"], val_fraction: float = _MODEL_OPTS["val_fraction"],
    seed: Optional[int] = _MODEL_OPTS["seed"], recipe: Optional[Path] = _MODEL_OPTS["recipe"],
    sets: List[str] = _MODEL_OPTS["sets"],
):
    """DeiT distillation: a frozen teacher trains the student's distillation token (hard, soft or none).

        edgevit distill --teacher resnet18_cifar --teacher-checkpoint runs/teacher/model/weights.safetensors \
            --student deit_tiny_distilled --distillation hard --data cifar-10-batches-py --img-size 32 --patch-size 4 --num-classes 10
    """
    if distillation is None and not recipe and not resume:
        distillation = "hard"
    from .. import api

    if alpha is None and distillation == "soft" and not recipe and not resume:
        alpha = 0.1
    cfg = api.train_config(recipe, sets, out_dir if resume else None, student, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        distillation=distillation, teacher=teacher,
                        teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
                        alpha=alpha, tau=tau)
    _train_common(api.distill, student, data, split, num_classes, img_size, patch_size, checkpoint, pretrained, out_dir,
                  resume, exist_ok, val_fraction, cfg)


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
