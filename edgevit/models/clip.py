"""Two-tower models (CLIP, SigLIP, LiT) from open_clip_torch: find the architecture, check the
checkpoint before any work, load it, and encode the class prompts once (cached on disk).

``--model`` is an open_clip model name (``ViT-B-32``, ``ViT-B-16-SigLIP``), ``hf-hub:org/repo`` (online),
or a local model: a folder holding ``open_clip_config.json`` (and its weights, as ``edgevit lit``
writes it) or a JSON config file. edgevit reads one key open_clip has not got: ``vision_cfg.
timm_model_kwargs`` (e.g. ``{"img_size": 32, "patch_size": 4}``), passed to ``timm.create_model``
for the image tower, so a CIFAR-sized timm ViT can be the tower.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, ModelError, OfflineError, ZeroShotError, describe
from ..manifest import atomic_path, sha256_file
from ..progress import progress_bar, say
from . import load_state_dict
from .hub import _hub_offline, _looks_offline, from_hub, hub_reachable
from .prompts import Prompts, cache_dir, cache_key
from .zeroshot import timm_trunk

__all__ = ["TwoTower", "load_two_tower", "resolve_config", "build_two_tower", "check_two_tower_state",
           "encode_classes", "template_mean", "embed_widths", "WEIGHTS_FILES"]

WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # a local-dir model's weights


@dataclass
class TwoTower:
    """A loaded two-tower model with what baking its classifier needs."""

    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode
    config: dict[str, Any]  # open_clip model_cfg (embed_dim, vision_cfg, text_cfg, ...)
    preprocess: dict[str, Any]  # open_clip PreprocessCfg as a dict (size, mean, std, interpolation, resize_mode)
    tokenizer: Callable[[list[str]], torch.Tensor]
    arch: str
    weights_id: str  # "sha256:<hex>" of the checkpoint, or "hub:<arch>:<tag>"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    pretrained: str | None = None

    def source(self) -> dict[str, Any]:
        return {"model": self.arch, "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                "pretrained": self.pretrained}


def _local_config(path: Path) -> tuple[dict, dict, Path | None]:
    """(model_cfg, preprocess_cfg, weights file or None) of a local folder or JSON file."""
    file = path / "open_clip_config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"{path} holds no open_clip_config.json",
                         "pass the folder `edgevit lit` wrote (<run>/model), or an open_clip model name")
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"model config {file} cannot be read: {describe(e)}", "fix or re-create the JSON file") from e
    model_cfg, pp = (raw["model_cfg"], raw.get("preprocess_cfg", {})) if "model_cfg" in raw else (raw, {})
    weights = next((file.parent / w for w in WEIGHTS_FILES if (file.parent / w).is_file()), None)
    return model_cfg, pp, weights


def resolve_config(arch: str) -> tuple[dict, dict, Path | None]:
    """(open_clip model_cfg, preprocess overrides, local weights) of ``arch``."""
    import open_clip

    if arch.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        try:
            with _hub_offline(not hub_reachable()):
                raw = _get_hf_config(arch.removeprefix("hf-hub:"))
        except Exception as e:
            raise OfflineError(f"cannot read {arch}'s config from the hub: {describe(e)}",
                               "run once online, or pass a local folder with open_clip_config.json") from e
        return raw["model_cfg"], raw.get("preprocess_cfg", {}), None
    local = Path(os.path.expanduser(arch.removeprefix("local-dir:")))
    if arch.startswith("local-dir:") or local.suffix == ".json" or local.is_dir():
        cfg, pp, weights = _local_config(local)
    else:
        cfg, pp, weights = open_clip.get_model_config(arch), {}, None
        if cfg is None:
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5)
            raise ModelError(f"unknown two-tower model {arch!r}",
                             "pass an open_clip model name (see open_clip.list_models())"
                             ", a folder with open_clip_config.json, or a JSON config file"
                             + (f" (did you mean: {', '.join(close)}?)" if close else ""))
        cfg = copy.deepcopy(cfg)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg or "embed_dim" not in cfg:
        raise ZeroShotError(f"{arch} is not a two-tower model config (it needs embed_dim, vision_cfg and text_cfg)",
                            "pass a CLIP/SigLIP/LiT config: an open_clip model name or an open_clip_config.json")
    if "multimodal_cfg" in cfg:
        raise ZeroShotError(f"{arch} is a CoCa model (it has a text decoder)",
                            "use a CLIP or SigLIP model; CoCa's contrastive towers are not supported yet")
    return cfg, pp, weights


_TEXT_PREFIXES = ("text.", "token_embedding.", "transformer.", "text_projection", "positional_embedding", "ln_final.")


def embed_widths(state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(image embedding width, text embedding width) read off a CLIP-style state dict; None where unknown."""
    def first(keys: list[tuple[str, int]]) -> int | None:
        for k, dim in keys:
            if k in state and state[k].ndim == 2:
                return int(state[k].shape[dim])
        return None

    image = first([("visual.proj", 1), ("visual.head.proj.weight", 0), ("visual.head.mlp.fc2.weight", 0),
                   ("visual.trunk.head.weight", 0), ("visual.attnpool.c_proj.weight", 0)])
    text = first([("text_projection", 1), ("text_projection.weight", 0), ("text.text_projection", 1),
                  ("text.text_projection.weight", 0), ("text.proj.weight", 0), ("text.proj.2.weight", 0)])
    return image, text


def check_two_tower_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint that is not an image tower plus a text tower, or whose towers' widths differ."""
    has_image = any(k.startswith("visual.") for k in state)
    has_text = any(k.startswith(_TEXT_PREFIXES) for k in state)
    if not (has_image and has_text):
        kind = ("an image classifier (timm/DeiT weights)" if any(k.startswith(("blocks.", "patch_embed.", "stem."))
                                                                 for k in state)
                else "no image tower ('visual.*' keys)" if not has_image else "no text tower")
        raise ZeroShotError(
            f"checkpoint {path} is not a two-tower model: it holds {kind}",
            "pass a CLIP/SigLIP/LiT checkpoint with both towers (visual.* and text keys); to give an image "
            "classifier a text tower, run `edgevit lit --checkpoint` on it first")
    image, text = embed_widths(state)
    if image is not None and text is not None and image != text:
        raise ZeroShotError(
            f"checkpoint {path}: the text tower's embedding width ({text}) does not match the image tower's ({image})",
            "the towers must project into one shared space: use a checkpoint trained as a pair, or a text "
            f"projection to {image} dimensions")


def build_two_tower(config: dict[str, Any]) -> torch.nn.Module:
    """An open_clip CLIP (or CustomTextCLIP) from a model_cfg dict, random weights, eval mode."""
    import open_clip

    cfg = copy.deepcopy(config)
    cfg.pop("preprocess_cfg", None)
    kwargs = cfg["vision_cfg"].pop("timm_model_kwargs", None)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    try:
        model = cls(**cfg)
    except (TypeError, AssertionError, ValueError) as e:
        raise ModelError(f"the two-tower config cannot be built: {describe(e)}",
                         "check its vision_cfg/text_cfg keys against open_clip's CLIPVisionCfg/CLIPTextCfg") from e
    if kwargs:
        timm_trunk(model.visual, cfg["vision_cfg"], kwargs, cfg["embed_dim"])
    return model.eval()


def _tokenizer(arch: str, config: dict) -> Callable:
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = config.get("text_cfg", {})
    ctx = text.get("context_length", 77)
    try:
        if open_clip.get_model_config(arch) is not None or arch.startswith(("hf-hub:", "local-dir:")):
            return open_clip.get_tokenizer(arch)
        if text.get("hf_tokenizer_name"):
            return HFTokenizer(text["hf_tokenizer_name"], context_length=ctx, **(text.get("tokenizer_kwargs") or {}))
        return SimpleTokenizer(context_length=ctx, **(text.get("tokenizer_kwargs") or {}))
    except Exception as e:
        if _looks_offline(e) or not hub_reachable():
            raise OfflineError(f"the tokenizer of {arch} cannot be downloaded: {describe(e)}",
                               "run once online (it is cached), or use a model with open_clip's built-in "
                               "BPE tokenizer (no text_cfg.hf_tokenizer_name)") from e
        raise


def _preprocess(config: dict, overrides: dict) -> dict[str, Any]:
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    pp = asdict(PreprocessCfg())
    pp["size"] = config["vision_cfg"].get("image_size", pp["size"])
    pp.update({k: v for k, v in {**config.get("preprocess_cfg", {}), **overrides}.items() if k in pp})
    return pp


def _from_hub(arch: str, tag: str | None) -> torch.nn.Module:
    import open_clip

    return from_hub(lambda: open_clip.create_model(arch, pretrained=tag).eval(),
                    f"cannot download the weights of {arch}{f' ({tag})' if tag else ''}",
                    "this machine looks offline: pass --checkpoint PATH to a local open_clip checkpoint "
                    "(.safetensors/.bin/.pt state dict)")


def load_two_tower(arch: str, checkpoint: str | Path | None = None, pretrained: str | None = None) -> TwoTower:
    """Load ``arch`` with its weights: ``checkpoint`` (a local state dict), else the weights beside a
    local config, else open_clip's hub weights ``pretrained`` (default: its first tag for ``arch``)."""
    import open_clip

    state, path = None, None
    if checkpoint is not None:
        path = Path(os.path.expanduser(str(checkpoint))).resolve()
        state = load_state_dict(path)  # missing, empty, corrupt and non-finite files fail here
        check_two_tower_state(state, path)
    config, pp, local_weights = resolve_config(arch)
    if state is None and local_weights is not None:
        path = local_weights.resolve()
        state = load_state_dict(path)
        check_two_tower_state(state, path)
    if state is None:
        tags = [] if arch.startswith("hf-hub:") else open_clip.list_pretrained_tags_by_model(arch)
        tag = pretrained or (tags[0] if tags else None)
        if not tag and not arch.startswith("hf-hub:"):
            raise CheckpointError(f"{arch} has no published weights and no --checkpoint was given",
                                  "pass --checkpoint PATH to its trained weights")
        model = _from_hub(arch, tag)
        pp = {**pp, **(getattr(model.visual, "preprocess_cfg", None) or {})}
        return TwoTower(model, config, _preprocess(config, pp), _tokenizer(arch, config), arch, f"hub:{arch}:{tag}",
                        pretrained=tag)
    model = build_two_tower(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the two-tower model {arch}: {describe(e)[:600]}",
                              "pass the --model (open_clip name or config) this checkpoint was trained as") from e
    digest = sha256_file(path)
    return TwoTower(model.eval(), config, _preprocess(config, pp), _tokenizer(arch, config), arch, f"sha256:{digest}",
                    checkpoint=str(path), checkpoint_sha256=digest)


def template_mean(emb: torch.Tensor) -> torch.Tensor:
    """Unit class embeddings [C, D] from the unit embeddings of each class's templates [C, T, D]: averaged,
    then normalised again (open_clip's zero-shot recipe; LiT's history scores with it too)."""
    emb = emb.mean(dim=1)
    return emb / emb.norm(dim=-1, keepdim=True)


@torch.no_grad()
def _encode(tt: TwoTower, prompts: Prompts, batch_texts: int) -> torch.Tensor:
    per_step = max(1, batch_texts // len(prompts.templates))
    out = []
    with progress_bar("encoding class prompts", len(prompts.classes), unit="class") as advance:
        for i in range(0, len(prompts.classes), per_step):
            names = prompts.classes[i:i + per_step]
            texts = [t for c in names for t in prompts.texts(c)]
            emb = tt.model.encode_text(tt.tokenizer(texts), normalize=True).float()
            out.append(template_mean(emb.reshape(len(names), len(prompts.templates), -1)))
            advance(len(names))
    return torch.cat(out)


def encode_classes(tt: TwoTower, prompts: Prompts, batch_texts: int = 256, cache: bool = True
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The classes' text embeddings [classes, width], unit length (each template's embedding normalised,
    averaged, normalised again, as open_clip's zero-shot classifier does), and where they came from.
    Cached under :func:`~edgevit.models.prompts.cache_dir` by (weights, architecture, classes, templates)."""
    from safetensors.torch import load_file, save_file

    key = cache_key(tt.weights_id, tt.config, prompts)
    file = cache_dir() / f"{key}.safetensors"
    if cache and file.is_file():
        try:
            emb = load_file(str(file))["text"]
            if emb.shape[0] == len(prompts.classes):
                say(f"text embeddings of {len(prompts.classes)} classes from the cache: ", plain=str(file))
                return emb, {"key": key, "cached": True, "file": str(file)}
        except Exception:  # a torn or foreign file: recompute and overwrite
            pass
    emb = _encode(tt, prompts, batch_texts).contiguous()
    if cache:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(file) as tmp:
                save_file({"text": emb}, str(tmp), metadata={"weights": tt.weights_id, "classes": str(len(emb))})
        except OSError as e:  # a read-only cache costs time, not correctness
            say(f"[yellow]text embeddings not cached ({describe(e)})[/]")
    return emb, {"key": key, "cached": False, "file": str(file) if cache else None}
