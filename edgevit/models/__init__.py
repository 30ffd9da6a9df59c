"""Model zoo: short names for the DeiT/ViT/Mixer rows edgevit knows, mapped to timm.

Any other timm model name is accepted as-is. Weights come from a local ``checkpoint``
(timm/DeiT ``.pth`` with or without a ``model`` key, or ``.safetensors``), or from timm's hub
when ``pretrained=True`` and the machine is online.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CheckpointError, ModelError, OfflineError, describe
from ..manifest import sha256_file
from .hub import from_hub, hub_reachable
from .zeroshot import NAMES as ZEROSHOT_NAMES
from .zeroshot import baked_kwargs, read_record

__all__ = ["ModelEntry", "ModelSpec", "ModelTransform", "register", "list_models", "resolve", "create_model",
           "load_state_dict", "with_checkpoint_hash", "count_params", "hub_reachable",
           "HEAD_MODULES"]  # timm's register_model appends resnet18_cifar

# The classifier heads (the float scope's one list): checkpoint loading checks their class count.
from ..float_scope import HEAD_MODULES  # noqa: E402


class ModelTransform(Protocol):
    """What :func:`create_model` applies (edgevit.transforms implements it). A transform that
    changes weight shapes is applied before the weights load, so its checkpoints reload."""

    changes_shapes: bool

    def apply(self, model: torch.nn.Module) -> None:
        """Transform ``model`` in place."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of the zoo. ``family`` says what the model is made of (token pruning needs 'vit')."""

    name: str
    timm_name: str
    family: str  # "vit" (class token + attention blocks) or "mixer"
    distilled: bool = False
    params_m: float = 0.0
    imagenet_top1: float | None = None  # as published (DeiT paper, tables 1 and 5)
    note: str = ""


_ZOO: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _ZOO:
        raise ValueError(f"model {entry.name!r} registered twice")
    _ZOO[entry.name] = entry
    return entry


for _e in [
    ModelEntry("deit_tiny", "deit_tiny_patch16_224", "vit", False, 5.7, 72.2, "DeiT-Ti"),
    ModelEntry("deit_small", "deit_small_patch16_224", "vit", False, 22.1, 79.8, "DeiT-S"),
    ModelEntry("deit_base", "deit_base_patch16_224", "vit", False, 86.6, 81.8, "DeiT-B"),
    ModelEntry("deit_tiny_distilled", "deit_tiny_distilled_patch16_224", "vit", True, 5.9, 74.5,
               "DeiT-Ti with distillation token"),
    ModelEntry("deit_small_distilled", "deit_small_distilled_patch16_224", "vit", True, 22.4, 81.2,
               "DeiT-S with distillation token"),
    ModelEntry("deit_base_distilled", "deit_base_distilled_patch16_224", "vit", True, 87.3, 83.4,
               "DeiT-B with distillation token"),
    ModelEntry("vit_tiny", "vit_tiny_patch16_224", "vit", False, 5.7, None, "ViT-Ti/16"),
    ModelEntry("vit_small", "vit_small_patch16_224", "vit", False, 22.1, None, "ViT-S/16"),
    ModelEntry("vit_base", "vit_base_patch16_224", "vit", False, 86.6, 77.9, "ViT-B/16"),
    ModelEntry("vit_large", "vit_large_patch16_224", "vit", False, 304.3, 76.5, "ViT-L/16"),
    ModelEntry("vit_huge", "vit_huge_patch14_224", "vit", False, 632.0, None, "ViT-H/14"),
    ModelEntry("mixer_b16", "mixer_b16_224", "mixer", False, 59.9, 76.4,
               "MLP-Mixer B/16 (no attention: token pruning does not apply)"),
    ModelEntry("mixer_l16", "mixer_l16_224", "mixer", False, 208.2, 71.8,
               "MLP-Mixer L/16 (no attention: token pruning does not apply)"),
]:
    register(_e)


def resnet18_cifar(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """timm's ResNet-18 with the usual 32-px stem (3×3 stride-1 conv, no max-pool): the CNN teacher
    for CIFAR-sized distillation. Registered with timm below, so every tool can build it by name."""
    from timm.models.resnet import BasicBlock, ResNet

    if pretrained:
        raise OfflineError("resnet18_cifar has no published weights", "train it: edgevit train --model resnet18_cifar")
    kwargs.pop("img_size", None)  # the stem works at any size; the data config carries the size
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    model = ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465),
                            "std": (0.2470, 0.2435, 0.2616), "interpolation": "bicubic", "crop_pct": 1.0,
                            "num_classes": model.num_classes}
    return model


def _register_with_timm() -> None:
    import timm
    from timm.models import register_model

    if "resnet18_cifar" not in timm.list_models():
        register_model(resnet18_cifar)


_register_with_timm()
register(ModelEntry("resnet18_cifar", "resnet18_cifar", "cnn", False, 11.2, None,
                    "ResNet-18 with a 32-px stem: the CNN teacher for CIFAR-sized distillation"))


def list_models() -> list[ModelEntry]:
    return list(_ZOO.values())


def resolve(name: str) -> ModelEntry:
    """Zoo short name, or any timm model name (family guessed from its name)."""
    if name in _ZOO:
        return _ZOO[name]
    import timm

    if name in timm.list_models():
        family = "mixer" if "mixer" in name else "vit" if ("vit" in name or "deit" in name) else "other"
        return ModelEntry(name, name, family, distilled="distilled" in name)
    close = [n for n in list(_ZOO) if name.split("_")[0] in n][:5]
    close += timm.list_models(f"*{name}*")[:5]
    raise ModelError(
        f"unknown model {name!r}",
        "run `edgevit models` for the zoo's short names; any timm model name works too"
        + (f" (did you mean: {', '.join(close)}?)" if close else ""),
    )


@dataclass
class ModelSpec:
    """Everything needed to rebuild the float model; stored in every manifest."""

    name: str
    num_classes: int | None = None
    img_size: int | None = None
    patch_size: int | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    pretrained: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # other timm kwargs (depth=..., ...)
    prune: str | None = None  # transforms (edgevit.transforms), composed with '+': evit:0.7, tome:8, evit:0.7+tome:4

    def __post_init__(self) -> None:
        if self.checkpoint:  # recorded absolute, so a run validates from any working directory
            self.checkpoint = os.path.abspath(os.path.expanduser(str(self.checkpoint)))
        if self.name in ZEROSHOT_NAMES and "zeroshot" not in self.extra and self.checkpoint:
            if record := read_record(self.checkpoint):  # a baked file carries its record: the spec becomes whole
                self.extra = {**self.extra, "zeroshot": record}

    def check(self) -> None:
        """Sizes that cannot work, refused before any work (the model's own defaults are checked
        when it is built)."""
        for flag, value in (("--img-size", self.img_size), ("--patch-size", self.patch_size),
                            ("--num-classes", self.num_classes)):
            if value is not None and value < 1:
                raise ModelError(f"{flag} must be at least 1, got {value}", f"pass a positive {flag}")
        if self.img_size and self.patch_size:
            _check_patches(self.img_size, self.patch_size)

    def timm_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(self.extra)
        if self.num_classes is not None:
            kw["num_classes"] = self.num_classes
        if self.img_size is not None:
            kw["img_size"] = self.img_size
        if self.patch_size is not None:
            kw["patch_size"] = self.patch_size
        return kw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(**d)


def _check_patches(img_size: int, patch_size: int) -> None:
    if img_size % patch_size:
        below, above = img_size - img_size % patch_size, img_size - img_size % patch_size + patch_size
        raise ModelError(f"--img-size {img_size} is not a multiple of the patch size {patch_size}: the last "
                         f"{img_size % patch_size} pixel(s) of each row and column would be dropped silently",
                         f"pass --img-size {below or above} or {above}, or a --patch-size that divides {img_size}")


def with_checkpoint_hash(spec: ModelSpec) -> ModelSpec:
    """A copy of ``spec`` recording its checkpoint's sha256 (validation checks the weights by it)."""
    digest = sha256_file(spec.checkpoint) if spec.checkpoint and Path(spec.checkpoint).is_file() else None
    return dataclasses.replace(spec, checkpoint_sha256=digest)


def create_model(spec: ModelSpec, transforms: Sequence[ModelTransform] = ()) -> torch.nn.Module:
    """Build the timm model of ``spec`` in eval mode, with its weights loaded and ``transforms``
    applied: those that change weight shapes before the weights load, the others after.
    ``spec`` is not changed (see :func:`with_checkpoint_hash`)."""
    import timm

    entry = resolve(spec.name)
    use_hub = spec.pretrained and not spec.checkpoint
    kwargs = spec.timm_kwargs()
    if entry.timm_name in ZEROSHOT_NAMES:
        kwargs = baked_kwargs(kwargs)
    try:
        model = timm.create_model(entry.timm_name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModelError(f"model {spec.name!r} does not accept these options: {e}",
                         "drop --img-size/--patch-size or the extra option it names") from e
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) and getattr(pe, "patch_size", None):
        _check_patches(int(pe.img_size[0]), int(pe.patch_size[0]))
    early = [t for t in transforms if t.changes_shapes]
    if early and use_hub:
        raise ModelError(f"{spec.prune} changes weight shapes, so it needs weights saved in its shape",
                         "pass --checkpoint with the transformed model's weights (e.g. from its fine-tune)")
    for t in early:
        t.apply(model)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        _load_into(model, load_state_dict(path), path, spec)
    elif use_hub:
        model = _from_hub(entry, spec)
    for t in transforms:
        if not t.changes_shapes:
            t.apply(model)
    model.eval()
    return model


def _from_hub(entry: ModelEntry, spec: ModelSpec) -> torch.nn.Module:
    import timm

    return from_hub(lambda: timm.create_model(entry.timm_name, pretrained=True, **spec.timm_kwargs()),
                    f"cannot download pretrained weights for {spec.name!r} ({entry.timm_name})",
                    "this machine looks offline: pass --checkpoint PATH to a local .pth/.safetensors file, "
                    "or --no-pretrained for random weights (fine for latency, not for accuracy)")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only``); accept DeiT's ``{'model': ...}`` wrappers."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a weights file",
                              "pass the .pth/.safetensors file inside it (a run's weights are in "
                              "<run>/model/weights.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path given to --checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)",
                              "the download or save was interrupted: re-download or re-save it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's pickle-protocol notes: the error below says it all
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {describe(e)}",
            "the file is corrupt or not a PyTorch/safetensors checkpoint; re-download or re-save it "
            "(edgevit loads with weights_only=True, so pickled objects other than tensors are refused)",
        ) from e
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors",
                              "save it with torch.save(model.state_dict(), path)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights (NaN or Inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}",
            "the training that saved it diverged: use an earlier checkpoint, or retrain with a lower --lr")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: torch.nn.Module, state: dict, path: Path, spec: ModelSpec) -> None:
    own = model.state_dict()
    state = _resample_pos_embed(model, state)
    head = next((f"{m}.weight" for m in HEAD_MODULES if f"{m}.weight" in own), None)
    if head and head in state and state[head].shape[0] != own[head].shape[0]:
        raise CheckpointError(
            f"checkpoint {path} has a {state[head].shape[0]}-class head; the model was built for "
            f"{own[head].shape[0]} classes",
            f"pass --num-classes {state[head].shape[0]} (or fine-tune a new head with `edgevit train`)",
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                ("shape differs", [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                   for k in wrong]))
            if keys
        )
        raise CheckpointError(
            f"checkpoint {path} does not fit model {spec.name!r} ({detail})",
            "pick the --model this checkpoint was trained as, with its --img-size/--patch-size",
        )
    model.load_state_dict(state, strict=True)


def _resample_pos_embed(model: torch.nn.Module, state: dict) -> dict:
    """Interpolate a ViT position embedding saved at another image size (timm does the math)."""
    own = getattr(model, "pos_embed", None)
    theirs = state.get("pos_embed")
    if own is None or theirs is None or theirs.shape == own.shape or theirs.shape[-1] != own.shape[-1]:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    state = dict(state)
    try:
        state["pos_embed"] = resample_abs_pos_embed(theirs, new_size=grid, num_prefix_tokens=prefix)
    except Exception:
        return state  # leave it to the shape check to report
    return state


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register_zeroshot() -> None:
    from .zeroshot import register as _register

    _register()


_register_zeroshot()  # timm names, not zoo rows: they exist only as files `edgevit zeroshot` bakes
