"""``edgevit zeroshot``: bake a two-tower model's class prompts into one classifier, then run it through
the export pipeline like any model (every target, int8, token pruning, validation, bench, report).

Run directory: ``model/zeroshot.safetensors`` (the baked classifier, its record in the file's metadata),
``model/zeroshot.json`` (classes, templates, the source weights, the text-embedding cache key), then the
export's own files (``run.json``, ``artifacts/``, ``results/``, ``report.*``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import transforms
from ..errors import ZeroShotError
from ..manifest import command_line, create_run_dir, now, remove_if_empty_run, write_json
from ..models import ModelSpec
from ..models.bake import bake, save_baked
from ..models.clip import load_two_tower
from ..models.prompts import Prompts
from ..progress import say
from .export import ExportOptions
from .training import train_then_export

__all__ = ["ZeroShotOptions", "bake_zeroshot", "bake_only", "run_zeroshot"]


@dataclass
class ZeroShotOptions:
    """What ``edgevit zeroshot`` bakes: the two-tower model and the label set."""

    model: str  # open_clip name (ViT-B-32, ViT-B-16-SigLIP), hf-hub:org/repo, or a local folder / config JSON
    classes: str | list[str] = field(default_factory=list)  # built-in set, file or comma-separated list
    templates: str | list[str] = "openai"  # built-in set (openai, simple, photo) or a file
    checkpoint: str | None = None  # local open_clip state dict; None: the folder's own weights or the hub
    pretrained: str | None = None  # open_clip pretrained tag (online); default: the model's first tag
    cache: bool = True  # reuse text embeddings computed before (same weights, classes and templates)

    def prompts(self) -> Prompts:
        return Prompts.read(self.classes, self.templates)


def bake_zeroshot(zopts: ZeroShotOptions, folder: Path, prompts: Prompts | None = None
                  ) -> tuple[torch.nn.Module, ModelSpec]:
    """Bake ``zopts`` into ``folder`` (weights + record); returns the float classifier and its spec."""
    prompts = prompts or zopts.prompts()
    tt = load_two_tower(zopts.model, zopts.checkpoint, zopts.pretrained)
    say(f"baking {len(prompts.classes)} classes × {len(prompts.templates)} templates into {zopts.model}'s "
        "image tower")
    model, record, facts = bake(tt, prompts, cache=zopts.cache)
    spec = save_baked(model, record, folder)
    write_json(folder / "zeroshot.json", {
        "created": now(), "command": command_line(), "spec": spec.to_dict(),
        "text_embeddings": {k: facts.get(k) for k in ("key", "cached", "file")},
        "classes": record["classes"], "templates": record["templates"], "source": record["source"]})
    bias = record["logit_bias_value"]
    say(f"  [green]✓[/] baked {spec.name}: {len(prompts.classes)} classes, logit scale {record['logit_scale']:.2f}"
        f"{'' if bias is None else f', bias {bias:.2f}'}  (text embeddings "
        f"{'from the cache' if facts.get('cached') else 'encoded'})")
    return model, spec


def check_zeroshot(zopts: ZeroShotOptions) -> Prompts:
    """The class list and templates, checked before any work (the weights are checked as they load,
    before anything is written)."""
    if not zopts.model:
        raise ZeroShotError("no two-tower model given", "pass --model (an open_clip name or a local folder)")
    return zopts.prompts()


def run_zeroshot(zopts: ZeroShotOptions, opts: ExportOptions, prune: str | None = None) -> Path:
    """Bake into ``opts.out/model`` and export the classifier to ``opts.targets`` (validated on
    ``opts.data`` against its float self, benchmarked, reported). Returns the run directory."""
    prompts = check_zeroshot(zopts)
    transforms.parse(prune)
    if opts.data:
        _check_class_count(opts.data, opts.split, len(prompts.classes))
    placeholder = ModelSpec("zeroshot_vit", num_classes=len(prompts.classes), prune=prune)

    def make() -> tuple[torch.nn.Module, ModelSpec]:
        _, spec = bake_zeroshot(zopts, opts.out / "model", prompts)
        spec = dataclasses.replace(spec, prune=prune)
        model, _, _ = transforms.build_model(spec)  # from the saved weights: what every later stage rebuilds
        return model, spec

    return train_then_export(placeholder, opts, make)


def bake_only(zopts: ZeroShotOptions, out: Path, exist_ok: bool = False) -> tuple[torch.nn.Module, ModelSpec]:
    """Bake into ``out/model`` and stop (a failure leaves no half-made run behind)."""
    prompts = check_zeroshot(zopts)
    made = create_run_dir(Path(out), exist_ok)
    try:
        return bake_zeroshot(zopts, Path(out) / "model", prompts)
    except BaseException:
        if made:
            remove_if_empty_run(Path(out), made)
        raise


def _check_class_count(data: str, split: str, n: int) -> None:
    from ..data import source_classes

    have = source_classes(data, split)
    if have != n:
        raise ZeroShotError(f"{data} has {have} classes but --classes names {n}",
                            "name the data's classes, in its label order (e.g. --classes cifar10 for CIFAR-10, "
                            "--classes imagenet for ImageNet-1k folders)")
