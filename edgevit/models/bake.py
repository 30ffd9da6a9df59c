"""Bake a two-tower model and its classes into one classifier (:mod:`.zeroshot`), and save it so that
a :class:`~edgevit.models.ModelSpec` rebuilds it: the weights as safetensors, the record (tower config,
preprocessing, class names, templates, where the weights came from) in the spec's ``extra``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from . import ModelSpec
from .clip import TwoTower, encode_classes
from .prompts import Prompts
from .zeroshot import model_name_for, tower_state, zeroshot_model

__all__ = ["bake", "zeroshot_logits", "save_baked"]


def _logit_terms(model: torch.nn.Module) -> tuple[float, float | None]:
    scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
    bias = getattr(model, "logit_bias", None)
    if model.logit_scale.numel() != 1 or (bias is not None and bias.numel() != 1):
        from ..errors import ZeroShotError

        raise ZeroShotError("this model has a per-dimension logit scale or bias",
                            "use a model with scalar logit_scale/logit_bias (CLIP, SigLIP)")
    return scale, (float(bias.detach().reshape(-1)[0]) if bias is not None else None)


def bake(tt: TwoTower, prompts: Prompts, text: torch.Tensor | None = None, cache: bool = True
         ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(the baked classifier, its record for ``ModelSpec.extra['zeroshot']``, text-embedding facts).

    ``text``: the classes' unit text embeddings when already computed, else they are encoded (cached)."""
    facts: dict[str, Any] = {"cached": None}
    if text is None:
        text, facts = encode_classes(tt, prompts, cache=cache)
    scale, bias = _logit_terms(tt.model)
    record = {
        "tower": {"embed_dim": int(tt.config["embed_dim"]), "vision_cfg": tt.config["vision_cfg"],
                  "quick_gelu": bool(tt.config.get("quick_gelu", False))},
        "logit_bias": bias is not None, "logit_scale": scale, "logit_bias_value": bias,
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in tt.preprocess.items()},
        "classes": list(prompts.classes), "templates": list(prompts.templates),
        "classes_from": prompts.classes_from, "templates_from": prompts.templates_from,
        "source": tt.source(), "text_cache_key": facts.get("key"),
    }
    model = zeroshot_model(record, len(prompts.classes))
    state = tower_state(model, tt.model.visual)
    state["head.classifier.weight"] = (scale * text.float()).contiguous()
    if bias is not None:
        state["head.classifier.bias"] = torch.full((len(prompts.classes),), bias)
    model.load_state_dict(state, strict=True)
    return model.eval(), record, facts


@torch.no_grad()
def zeroshot_logits(tt: TwoTower, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """open_clip's own zero-shot logits: ``exp(s) · normalize(encode_image(x)) @ text.T (+ b)``, the reference
    the baked classifier must equal."""
    scale, bias = _logit_terms(tt.model)
    feats = tt.model.encode_image(images, normalize=True)
    logits = scale * feats @ text.T.to(feats.dtype)
    return logits + bias if bias is not None else logits


def save_baked(model: torch.nn.Module, record: dict[str, Any], folder: Path) -> ModelSpec:
    """Write ``folder/zeroshot.safetensors`` (atomically) and return the spec that rebuilds the model."""
    from safetensors.torch import save_file

    from ..manifest import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "zeroshot.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "edgevit": "zeroshot",
                                             "zeroshot": json.dumps(record)})
    name = model_name_for(record["tower"]["vision_cfg"])
    assert math.isfinite(record["logit_scale"])
    return ModelSpec(name=name, num_classes=len(record["classes"]), checkpoint=str(path), pretrained=False,
                     extra={"zeroshot": record})
