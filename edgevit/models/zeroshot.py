"""The baked zero-shot classifier: image tower → projection → L2 normalise → linear head holding
``exp(logit_scale)`` × the classes' text embeddings (+ SigLIP's logit bias). One ``nn.Module`` whose
logits equal open_clip's zero-shot logits, with no text tower left.

With a timm image tower (SigLIP, LiT, any ``timm_model_name`` config) the module *is* the timm model,
its ``head`` replaced by :class:`ZeroShotHead`: token pruning, int8 (the head stays float) and every
export target treat it as the ViT it is. open_clip's own ViT towers are wrapped (:class:`ZeroShotCLIP`).
Both are registered with timm (``zeroshot_vit``, ``zeroshot_clip``), so a :class:`~edgevit.models.ModelSpec`
with ``extra={"zeroshot": {...}}`` and the baked weights rebuilds them like any model.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

__all__ = ["ZeroShotHead", "ZeroShotCLIP", "image_tower", "timm_trunk", "zeroshot_model", "model_name_for",
           "data_cfg", "tower_state"]


class ZeroShotHead(nn.Module):
    """``classifier(normalize(proj(features)))``: ``classifier.weight`` = exp(logit_scale) × text embeddings,
    ``classifier.bias`` = SigLIP's logit bias (absent for CLIP)."""

    def __init__(self, proj: nn.Module, width: int, num_classes: int, bias: bool):
        super().__init__()
        self.proj = proj
        self.classifier = nn.Linear(width, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.normalize(self.proj(x), dim=-1))


class ZeroShotCLIP(nn.Module):
    """open_clip's own (non-timm) image tower, followed by the zero-shot head."""

    def __init__(self, visual: nn.Module, head: ZeroShotHead):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def timm_trunk(visual: nn.Module, vision_cfg: dict, kwargs: dict, embed_dim: int) -> None:
    """Rebuild an open_clip TimmModel's trunk with extra timm kwargs (open_clip passes none)."""
    import timm

    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if pool in ("abs_attn", "rot_attn"):
        raise ModelError("vision_cfg.timm_model_kwargs cannot be combined with attention pooling",
                         "drop timm_model_kwargs, or use timm_pool 'avg' or 'token'")
    classes = embed_dim if not proj else 0  # proj '': the trunk's own head is the projection
    visual.trunk = timm.create_model(vision_cfg["timm_model_name"], num_classes=classes, global_pool=pool,
                                     pretrained=False, **kwargs)


def image_tower(tower: dict[str, Any], img_size: int | None = None) -> nn.Module:
    """open_clip's image tower of a two-tower config ({embed_dim, vision_cfg, quick_gelu}), random weights."""
    from open_clip.model import _build_vision_tower

    vis = copy.deepcopy(tower["vision_cfg"])
    kwargs = dict(vis.pop("timm_model_kwargs", None) or {})
    if img_size is not None:
        if not vis.get("timm_model_name"):
            raise ModelError("--img-size applies to timm image towers only",
                             "drop --img-size: open_clip's own ViT keeps the size it was trained at")
        kwargs["img_size"] = img_size
    visual = _build_vision_tower(tower["embed_dim"], vis, quick_gelu=tower.get("quick_gelu", False))
    if kwargs:
        timm_trunk(visual, vis, kwargs, tower["embed_dim"])
    return visual


def data_cfg(pp: dict[str, Any]) -> dict[str, Any]:
    """open_clip's preprocessing as timm's ``pretrained_cfg`` (resize the short side, centre crop: crop_pct 1)."""
    size = pp["size"] if isinstance(pp["size"], (list, tuple)) else (pp["size"], pp["size"])
    mode = {"shortest": "center", "squash": "squash", "longest": "border"}.get(pp.get("resize_mode", "shortest"),
                                                                              "center")
    return {"input_size": (3, *size), "mean": tuple(pp["mean"]), "std": tuple(pp["std"]),
            "interpolation": pp.get("interpolation", "bicubic"), "crop_pct": 1.0, "crop_mode": mode,
            "num_classes": None}


def model_name_for(vision_cfg: dict[str, Any]) -> str:
    """The registered name: ``zeroshot_vit`` for a timm ViT tower (token transforms apply), else ``zeroshot_clip``."""
    name = vision_cfg.get("timm_model_name") or ""
    return "zeroshot_vit" if any(k in name for k in ("vit", "deit", "eva")) else "zeroshot_clip"


def zeroshot_model(zeroshot: dict[str, Any], num_classes: int, img_size: int | None = None) -> nn.Module:
    """The baked classifier's structure (random weights) from its record (see the module docstring)."""
    tower = zeroshot["tower"]
    width = int(tower["embed_dim"])
    visual = image_tower(tower, img_size)
    head_bias = bool(zeroshot.get("logit_bias"))
    if hasattr(visual, "trunk"):  # open_clip's TimmModel: the timm model itself, its head replaced
        model = visual.trunk
        model.head = ZeroShotHead(nn.Sequential(model.head, visual.head), width, num_classes, head_bias)
    else:
        model = ZeroShotCLIP(visual, ZeroShotHead(nn.Identity(), width, num_classes, head_bias))
    model.num_classes = num_classes
    cfg = data_cfg(zeroshot["preprocess"])
    cfg["num_classes"] = num_classes
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    model.class_names = list(zeroshot.get("classes") or [])
    return model.eval()


def tower_state(model: nn.Module, visual: nn.Module) -> dict[str, torch.Tensor]:
    """The baked model's tower weights, named as ``model`` names them, taken from open_clip's ``visual``."""
    own: dict[str, torch.Tensor] = {}
    for k, v in visual.state_dict().items():
        if isinstance(model, ZeroShotCLIP):
            own[f"visual.{k}"] = v
        elif k.startswith("trunk.head."):
            own["head.proj.0." + k.removeprefix("trunk.head.")] = v
        elif k.startswith("trunk."):
            own[k.removeprefix("trunk.")] = v
        elif k.startswith("head."):
            own["head.proj.1." + k.removeprefix("head.")] = v
        else:
            own[k] = v
    return own


NAMES = ("zeroshot_vit", "zeroshot_clip")


def read_record(checkpoint: str) -> dict[str, Any] | None:
    """The record ``edgevit zeroshot`` stores in a baked file's metadata (None: not a baked file)."""
    import json

    if not str(checkpoint).endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), "pt") as f:
            return json.loads((f.metadata() or {}).get("zeroshot", "null"))
    except Exception:  # missing or unreadable: the checkpoint loader reports it with its fix
        return None


def baked_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm kwargs of a baked classifier: its record (a ModelSpec reads it from the baked file's metadata,
    so ``--model zeroshot_vit --checkpoint <run>/model/zeroshot.safetensors`` is all a command needs)."""
    record = kwargs.get("zeroshot")
    if not record:
        raise ModelError("a zero-shot classifier is rebuilt from the file `edgevit zeroshot` baked",
                         "pass --checkpoint <run>/model/zeroshot.safetensors (written by edgevit zeroshot)")
    return {**kwargs, "zeroshot": record, "num_classes": kwargs.get("num_classes") or len(record["classes"])}


def _builder(name: str):
    def build(pretrained: bool = False, zeroshot: dict | None = None, num_classes: int | None = None,
              img_size: int | None = None, **kwargs: Any) -> nn.Module:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
            kwargs.pop(key, None)
        if pretrained or zeroshot is None or not num_classes:
            raise ModelError(f"{name} is built by `edgevit zeroshot` (it needs the baked weights and their record)",
                             "run edgevit zeroshot --model ARCH --checkpoint W --classes ..., then use its run's "
                             "model/ spec (or its recipe)")
        if kwargs:
            raise ModelError(f"{name} takes no options {sorted(kwargs)}", "drop them")
        return zeroshot_model(zeroshot, num_classes, img_size)

    build.__name__ = name
    return build


def register() -> None:
    import timm
    from timm.models import register_model

    for name in NAMES:
        if name not in timm.list_models():
            register_model(_builder(name))
