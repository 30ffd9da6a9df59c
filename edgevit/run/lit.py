"""``edgevit lit``: give a trained image classifier a text tower (LiT: locked-image text tuning), so that
it classifies by class names, then score its zero-shot classifier against the tower's own supervised head.

The run folder holds ``model/`` (an open_clip local model: ``open_clip_config.json`` and
``open_clip_model.safetensors``, loadable by :func:`edgevit.models.clip.load_two_tower` and so by
``edgevit zeroshot --model <run>/model``) and ``lit.json`` (options, recipe, history, evaluation, timings).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data import EMBEDDED, class_count, data_config, eval_transform, load_split, make_loader
from ..errors import DataError, ModelError, ZeroShotError
from ..eval.stats import paired
from ..manifest import (
    atomic_path,
    command_line,
    create_run_dir,
    library_versions,
    now,
    probe_output,
    remove_if_empty_run,
    write_json,
)
from ..models import ModelSpec, create_model, resolve
from ..models.bake import bake
from ..models.clip import build_two_tower, load_two_tower
from ..models.prompts import Prompts
from ..models.zeroshot import NAMES as ZEROSHOT_NAMES
from ..progress import progress_bar, say, stdout_console, table
from ..train.lit import LitConfig, caption_tokens, context_for, fit_lit, load_tokenizer, tower_features

__all__ = ["LitOptions", "run_lit", "lit_config", "MODEL_DIR"]

MODEL_DIR = "model"


@dataclass
class LitOptions:
    """Where ``edgevit lit`` reads and writes; the recipe (templates included) is ``config``."""

    data: str  # labelled images: a CIFAR folder, an ImageFolder tree, or "digits"
    out: Path  # the run folder to create
    classes: str | list[str] | None = None  # class names in label order (built-in set, file, "a,b,c"); None: the data's
    split: str = "test"  # the split the zero-shot classifier and the supervised head are scored on
    val_fraction: float = 0.2  # for sources without their own train/test split
    seed: int = 0  # the data split's seed (the recipe has its own: config.seed)
    exist_ok: bool = False  # write into an existing --out
    config: LitConfig = field(default_factory=LitConfig)


@dataclass
class _Checked:
    tower: torch.nn.Module
    prompts: Prompts
    train_ds: Any
    eval_ds: Any
    data_cfg: dict[str, Any]
    img_size: int
    config: LitConfig  # the recipe with its context length settled


def _check_tower(spec: ModelSpec) -> torch.nn.Module:
    if spec.name in ZEROSHOT_NAMES or "zeroshot" in spec.extra:
        raise ZeroShotError(f"{spec.name} is already a zero-shot classifier (it has no image tower of its own to lock)",
                            "pass the image classifier it was baked from, e.g. --model deit_tiny --checkpoint W")
    if spec.prune:
        raise ModelError(f"LiT locks the tower as trained: token pruning ({spec.prune}) is not supported here",
                         "drop --prune; prune the baked zero-shot classifier afterwards")
    entry = resolve(spec.name)
    if entry.family != "vit" or entry.distilled:
        kind = "a distilled ViT (two class tokens)" if entry.distilled else f"a {entry.family} model, not a ViT"
        raise ModelError(f"{spec.name} is {kind}: LiT's locked tower must be a timm ViT/DeiT with one class token",
                         "pass a ViT or DeiT (e.g. deit_tiny, vit_small) with its --checkpoint")
    spec.check()
    tower = create_model(spec)
    if not (hasattr(tower, "forward_head") and getattr(tower, "num_features", 0) and hasattr(tower, "patch_embed")):
        raise ModelError(f"{spec.name} is not a timm ViT (no forward_head/num_features/patch_embed)",
                         "pass a timm ViT or DeiT as the locked tower")
    return tower


def _class_names(spec_classes, data_classes: list[str] | None, data: str) -> str | list[str]:
    if spec_classes is not None:
        return spec_classes
    if not data_classes or all(c.isdigit() for c in data_classes):
        raise ZeroShotError(f"{data} carries no class names (its labels are {', '.join((data_classes or [])[:5])}...)",
                            "pass classes: a file with one name per line, a comma-separated list, or 'cifar10'")
    return list(data_classes)


def _check(spec: ModelSpec, opts: LitOptions) -> _Checked:
    """Everything that can be wrong, found before any work."""
    opts.config.check()
    tower = _check_tower(spec)
    img_size = int(spec.img_size or tower.patch_embed.img_size[0])
    dcfg = data_config(tower, img_size)
    tf = eval_transform(dcfg)
    train_ds = load_split(opts.data, "train", tf, opts.val_fraction, opts.seed)
    eval_ds = load_split(opts.data, opts.split, tf, opts.val_fraction, opts.seed)
    n_data = class_count(train_ds)
    prompts = Prompts.read(_class_names(opts.classes, train_ds.classes, opts.data), opts.config.templates)
    ctx = context_for(prompts.classes, prompts.templates, opts.config.context_length)
    head = int(getattr(tower, "num_classes", 0) or 0)
    if head and head != n_data:
        raise DataError(f"{opts.data} has {n_data} classes but the tower's head predicts {head}",
                        "pass data of the classes the tower was trained on (the supervised head is the reference)")
    if len(prompts.classes) != n_data:
        raise ZeroShotError(f"{len(prompts.classes)} class names were given for {n_data} classes in {opts.data}",
                            "pass one name per class, in label order")
    if len(set(train_ds.targets)) < 2:
        raise DataError(f"the training images of {opts.data} all have one label", "contrastive tuning needs 2+ classes")
    probe_output(Path(opts.out), opts.exist_ok, need_bytes=64 << 20)
    settled = dataclasses.replace(opts.config, context_length=ctx)
    return _Checked(tower, prompts, train_ds, eval_ds, dcfg, img_size, settled)


def lit_config(spec: ModelSpec, tower: torch.nn.Module, img_size: int, cfg: LitConfig) -> dict[str, Any]:
    """The open_clip model_cfg of the LiT model: the locked timm tower (its pre-logits feature is the image
    embedding, as LiT's) and a text transformer projecting to the tower's width."""
    kwargs = {k: v for k, v in spec.extra.items() if k not in ("num_classes", "global_pool")}
    kwargs.update(img_size=img_size, patch_size=int(tower.patch_embed.patch_size[0]))
    width = int(tower.num_features)
    return {"embed_dim": width,
            "vision_cfg": {"timm_model_name": resolve(spec.name).timm_name, "timm_model_kwargs": kwargs,
                           "timm_pool": str(getattr(tower, "global_pool", "token") or "token"),
                           "timm_proj": "linear" if cfg.image_proj else "none", "image_size": img_size},
            "text_cfg": {"context_length": cfg.context_length, "width": cfg.text_width, "heads": cfg.text_heads,
                         "layers": cfg.text_layers}}


def _preprocess_cfg(dcfg: dict[str, Any], img_size: int) -> dict[str, Any]:
    """The tower's own evaluation preprocessing in open_clip's terms (resize the short side, centre crop)."""
    return {"size": img_size, "mean": list(dcfg["mean"]), "std": list(dcfg["std"]),
            "interpolation": dcfg["interpolation"], "resize_mode": "shortest"}


def _build(spec: ModelSpec, tower: torch.nn.Module, img_size: int, cfg: LitConfig):
    torch.manual_seed(cfg.seed)  # the text tower's initial weights
    model_cfg = lit_config(spec, tower, img_size, cfg)
    clip = build_two_tower(model_cfg)
    locked = {k: v for k, v in tower.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    clip.visual.trunk.load_state_dict(locked, strict=True)
    if cfg.image_proj:  # start as the identity: step 0 is LiT's locked embedding
        torch.nn.init.eye_(clip.visual.head.proj.weight)
    return clip, model_cfg


def _save(clip: torch.nn.Module, model_cfg: dict, pp: dict, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "edgevit": "lit"})
    write_json(folder / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": pp})
    return folder


@torch.no_grad()
def _score(baked: torch.nn.Module, tower: torch.nn.Module, ds, baked_ds) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of the baked zero-shot classifier and of the tower's supervised head."""
    zs, sup = [], []
    loaders = zip(make_loader(ds, 128), make_loader(baked_ds, 128)) if baked_ds is not ds else \
        ((b, b) for b in make_loader(ds, 128))
    with progress_bar("zero-shot vs supervised head", len(ds), unit="img") as advance:
        for (x, y), (xb, _) in loaders:
            y = torch.as_tensor(y)
            sup.append((tower(x).argmax(1) == y).numpy())
            zs.append((baked(xb).argmax(1) == y).numpy())
            advance(len(y))
    return np.concatenate(zs), np.concatenate(sup)


def _evaluate(out: Path, prompts: Prompts, c: _Checked, opts: LitOptions) -> dict[str, Any]:
    tt = load_two_tower(str(out / MODEL_DIR))
    baked, record, _ = bake(tt, prompts, cache=False)
    bcfg = data_config(baked, c.img_size)
    same = {k: bcfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")} == \
        {k: c.data_cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    baked_ds = c.eval_ds if same else load_split(opts.data, opts.split, eval_transform(bcfg), opts.val_fraction,
                                                 opts.seed)
    zs, sup = _score(baked, c.tower, c.eval_ds, baked_ds)
    cmp = paired(sup, zs)
    return {"split": opts.split, "images": len(zs), "zeroshot_top1": cmp.top1, "classifier_top1": cmp.ref_top1,
            "zeroshot_minus_classifier_pts": cmp.top1 - cmp.ref_top1,
            "zeroshot_minus_classifier_ci95_pts": [-cmp.ci95_pts[1], -cmp.ci95_pts[0]], "paired": cmp.to_dict(),
            "same_preprocessing": same, "logit_scale": record["logit_scale"], "classes": list(prompts.classes),
            "templates": len(prompts.templates)}


def _summary(ev: dict[str, Any], spec: ModelSpec) -> None:
    p = ev["paired"]
    t = table("classifier", f"top-1 on {ev['images']} {ev['split']} images", "vs supervised head",
              title="LiT: zero-shot vs the locked tower's own head")
    t.add_row(f"{spec.name} supervised head", f"{ev['classifier_top1']:.2f} %", "reference")
    t.add_row(f"LiT zero-shot ({ev['templates']} templates)", f"{ev['zeroshot_top1']:.2f} %",
              f"{ev['zeroshot_minus_classifier_pts']:+.2f} pts (95% CI [{-p['ci95_pts'][1]:+.2f}, "
              f"{-p['ci95_pts'][0]:+.2f}]); only head right {p['only_ref_correct']}, only zero-shot right "
              f"{p['only_candidate_correct']}")
    stdout_console().print(t)


def run_lit(tower: ModelSpec, opts: LitOptions) -> Path:
    """Lock ``tower``, tune a text tower on captions of ``opts.data``'s classes, save the LiT model and
    score its zero-shot classifier against the tower's own head. Returns the run folder."""
    t0 = time.monotonic()
    c = _check(tower, opts)
    cfg, out = c.config, Path(opts.out)
    made = create_run_dir(out, opts.exist_ok)
    try:
        clip, model_cfg = _build(tower, c.tower, c.img_size, cfg)
        tokens = caption_tokens(load_tokenizer(cfg.context_length), c.prompts.classes, c.prompts.templates)
        say(f"LiT: {tower.name} locked ({int(c.tower.num_features)}-d features), text tower {cfg.text_layers}×"
            f"{cfg.text_width}, ", plain=f"{len(c.train_ds)} images of {len(c.prompts.classes)} classes × "
            f"{len(c.prompts.templates)} templates, {cfg.steps} steps")
        t1 = time.monotonic()
        feats, labels = tower_features(clip.visual.trunk, c.train_ds, flip=cfg.flip)
        t2 = time.monotonic()
        history = fit_lit(clip, feats, labels, tokens, cfg)
        t3 = time.monotonic()
        _save(clip, model_cfg, _preprocess_cfg(c.data_cfg, c.img_size), out / MODEL_DIR)
        ev = _evaluate(out, c.prompts, c, opts)
        t4 = time.monotonic()
        write_json(out / "lit.json", {
            "edgevit": __version__, "created": now(), "command": command_line(), "tower": tower.to_dict(),
            "data": opts.data if opts.data == EMBEDDED else os.path.abspath(os.path.expanduser(str(opts.data))),
            "options": {k: v for k, v in dataclasses.asdict(opts).items() if k != "config"},
            "config": dataclasses.asdict(cfg), "model_cfg": copy.deepcopy(model_cfg),
            "prompts": {"classes": list(c.prompts.classes), "classes_from": c.prompts.classes_from,
                        "templates_from": c.prompts.templates_from, "templates": len(c.prompts.templates)},
            "train_images": len(c.train_ds), "history": history, "evaluation": ev,
            "timings_s": {"check": round(t1 - t0, 2), "features": round(t2 - t1, 2), "tuning": round(t3 - t2, 2),
                          "evaluation": round(t4 - t3, 2), "total": round(time.monotonic() - t0, 2)},
            "versions": library_versions(("open_clip_torch",))})
    except BaseException:
        if made:
            remove_if_empty_run(out, made)
        raise
    _summary(ev, tower)
    say("LiT model: ", plain=str(out / MODEL_DIR))
    return out
