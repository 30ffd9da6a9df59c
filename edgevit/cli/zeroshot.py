"""Zero-shot commands: zeroshot (bake a CLIP/SigLIP/LiT model's class prompts into a classifier, then
export it like any model) and lit (give a trained image classifier a text tower)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import fresh, friendly, live_help, out, prune_help, split_targets
from .options import TargetOptionsCommand

ZEROSHOT_DOC = """Bake a two-tower model's class prompts into one classifier, then export, validate, bench and report it.

    Every class is encoded with every template by the text tower (averaged, normalised, cached by
    weights × classes × templates); the text tower is then dropped: the classifier is the image tower,
    its projection, an L2 normalisation and a linear head holding exp(logit_scale) × the class
    embeddings (+ SigLIP's bias). Its logits equal open_clip's zero-shot logits, and it goes through
    the same pipeline as any model (every target, int8, --prune, validation against labelled data and
    against the float zero-shot model).

    Online, with open_clip's hub weights (the first published tag unless --pretrained names one):

        edgevit zeroshot --model ViT-B-32 --pretrained laion2b_s34b_b79k --classes imagenet --target openvino-int8 --data imagenet/val
        edgevit zeroshot --model ViT-B-16-SigLIP --classes cats.txt --templates simple --target tensorrt-int8 --data pets/

    Offline, with local weights (an open_clip state dict, or the folder `edgevit lit` wrote):

        edgevit zeroshot --model ViT-B-32 --checkpoint clip.safetensors --classes imagenet --data imagenet/val
        edgevit zeroshot --model runs/lit/model --classes cifar10 --target onnx,openvino-int8 --data cifar-10-batches-py

    --classes: imagenet | cifar10 | a file (one name per line, or a JSON list) | a comma-separated list,
    in the label order of --data. --templates: openai (CLIP's 80) | simple (7) | photo | a file; each
    template holds one {} where the class name goes. The baked weights are <out>/model/zeroshot.safetensors:
    `edgevit export/optimize --model zeroshot_vit --checkpoint` that file takes them further.
    """


def zeroshot(
    model: str = typer.Option(..., "--model", "-m", help="open_clip model name (ViT-B-32, ViT-B-16-SigLIP), hf-hub:org/repo, or a local folder with open_clip_config.json / a config JSON"),
    classes: str = typer.Option(..., help="imagenet | cifar10 | FILE (one per line or JSON list) | 'cat,dog,...', in label order"),
    templates: str = typer.Option("openai", help="openai (CLIP's 80 prompts) | simple (7) | photo | FILE; each with one {}"),
    checkpoint: Optional[Path] = typer.Option(None, help="local open_clip weights (.safetensors/.bin/.pt state dict)"),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag when no --checkpoint (needs internet; default: the model's first tag)"),
    cache: bool = typer.Option(True, help="reuse text embeddings computed before for the same weights, classes and templates"),
    bake_only: bool = typer.Option(False, "--bake-only", help="write the baked classifier (<out>/model) and stop"),
    target: List[str] = typer.Option(["onnx"], "--target", "-t", help="targets to export to, repeat or comma-separate (`edgevit targets`)"),
    prune: Optional[str] = typer.Option(None, help="token transforms of a timm ViT tower before export (shown with --help: prune_help)"),
    data: Optional[str] = typer.Option(None, help="labelled images to validate on (their labels in --classes order)"),
    split: str = typer.Option("test", help="train | val | test | all"),
    limit: Optional[int] = typer.Option(None, help="validate on a stratified subset of this many images"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/zeroshot-<model>)"),
    exist_ok: bool = typer.Option(False, help="write into an existing --out"),
    bench: bool = typer.Option(True, help="benchmark latency after export"),
    options: Optional[dict] = None,  # the target options given (generated flags: .options)
):
    from .. import api

    zopts = api.ZeroShotOptions(model=model, classes=classes, templates=templates,
                                checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained, cache=cache)
    slug = Path(model.rstrip("/")).name.replace(":", "-") or "model"
    run_dir = out_dir or fresh(Path("runs") / f"zeroshot-{slug}")
    if bake_only:
        _, spec = api.bake_zeroshot(zopts, run_dir, exist_ok=exist_ok)
        out.print(f"baked: {spec.checkpoint}\nnext: edgevit export --model {spec.name} --checkpoint {spec.checkpoint} "
                  "--target ...", highlight=False)
        return
    opts = api.ExportOptions(targets=split_targets(target), out=run_dir, data=data, split=split, exist_ok=exist_ok,
                             validate_limit=limit, bench=bench, options=options or {})
    api.zeroshot(zopts, opts, prune=prune)


def lit(
    model: str = typer.Option("deit_tiny", "--model", "-m", help="the image classifier to lock: a zoo name or any timm ViT"),
    checkpoint: Optional[Path] = typer.Option(None, help="its trained weights (.pth/.safetensors)"),
    pretrained: bool = typer.Option(True, help="timm hub weights when no --checkpoint (needs internet)"),
    num_classes: Optional[int] = typer.Option(None, help="its classifier size (default: the checkpoint's)"),
    img_size: Optional[int] = typer.Option(None, help="its input size, e.g. 32 for CIFAR-sized towers"),
    patch_size: Optional[int] = typer.Option(None, help="its patch size, e.g. 4 at 32 px"),
    data: str = typer.Option(..., help="labelled images whose class names make the captions: CIFAR folder, ImageFolder or 'digits'"),
    classes: Optional[str] = typer.Option(None, help="class names in label order: cifar10 | imagenet | FILE | 'a,b,c' (default: the data's own names)"),
    templates: str = typer.Option("openai", help="caption templates: openai | simple | photo | FILE, each with one {}"),
    steps: int = typer.Option(300, help="optimizer steps (one random caption per image feature)"),
    batch_size: int = typer.Option(512, help="image features per step (the tower runs once, before tuning)"),
    lr: float = typer.Option(1e-3, help="AdamW peak learning rate (warm-up, then cosine)"),
    text_width: int = typer.Option(256, help="text transformer width"),
    text_layers: int = typer.Option(4, help="text transformer layers"),
    text_heads: int = typer.Option(4, help="text transformer heads"),
    image_proj: bool = typer.Option(False, "--image-proj", help="also train a linear image projection (LiT proper keeps the tower fully locked)"),
    split: str = typer.Option("test", help="the split both classifiers are scored on"),
    seed: int = typer.Option(0, help="seed of the sampling and the text tower's initialisation"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/lit-<model>)"),
    exist_ok: bool = typer.Option(False, help="write into an existing --out"),
):
    """LiT: lock a trained image classifier and tune a small text tower to read its features, so it
    classifies any label set zero-shot.

    The tower's features are computed once (it is frozen); open_clip's text transformer learns, on
    captions made from the class names and templates, to embed each caption next to the images of
    its class (contrastive, same-class captions not counted as negatives). Writes an open_clip model
    folder (<out>/model: open_clip_config.json + open_clip_model.safetensors) and compares its
    zero-shot top-1 with the tower's own supervised head on --split, paired on the same images.

        edgevit lit --model deit_tiny --checkpoint benchmarks/reference/cifar_deit_tiny_p4.safetensors --num-classes 10 --img-size 32 --patch-size 4 --data ../shared/data/cifar-10-batches-py --out runs/lit
        edgevit zeroshot --model runs/lit/model --classes cifar10 --target openvino-int8 --data ../shared/data/cifar-10-batches-py
    """
    from .. import api

    spec = api.ModelSpec(name=model, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                         checkpoint=str(checkpoint) if checkpoint else None, pretrained=pretrained and not checkpoint)
    cfg = api.LitConfig(steps=steps, batch_size=batch_size, lr=lr, text_width=text_width, text_layers=text_layers,
                        text_heads=text_heads, templates=templates, image_proj=image_proj, seed=seed)
    run_dir = out_dir or fresh(Path("runs") / f"lit-{model}")
    api.lit(spec, api.LitOptions(data=data, out=run_dir, classes=classes, split=split, exist_ok=exist_ok, config=cfg))


def register(app: typer.Typer) -> None:
    app.command("zeroshot", cls=live_help(prune=prune_help))(friendly(TargetOptionsCommand(zeroshot, ZEROSHOT_DOC)))
    app.command("lit")(friendly(lit))
