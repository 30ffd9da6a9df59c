"""Token pruning and merging as a model transform on timm ViT/DeiT models.

``apply_prune(model, "evit:0.7")`` (or ``"evit:0.7@3,6,9"``, ``"tome:8"``) replaces the model's
``blocks`` with :class:`TokenBlocks`, which runs the same block modules (same weights) and applies
:mod:`edgevit.ops.tokens` between attention and MLP. The plan (tokens per block) is fixed when the
transform is applied, so every shape is static. Special tokens (class, distillation, registers)
are never pruned or merged, so distilled models keep both heads.

The transform is part of the model's spec (``ModelSpec.prune``): every manifest records it, and
validation rebuilds the same pruned float model to compare artifacts against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError
from ..ops import tokens as T

METHODS = ("evit", "tome")


class PruneError(ModelError):
    """A pruning spec that cannot apply to this model."""


@dataclass(frozen=True)
class PruneSpec:
    method: str  # evit | tome
    keep_rate: float | None = None  # evit
    locations: tuple[int, ...] | None = None  # evit; None = a quarter, half and three quarters of depth
    r: int | None = None  # tome: tokens merged per block

    def __str__(self) -> str:
        if self.method == "tome":
            return f"tome:{self.r}"
        loc = "@" + ",".join(map(str, self.locations)) if self.locations is not None else ""
        return f"evit:{self.keep_rate:g}{loc}"


def parse_prune(text: str) -> PruneSpec:
    """'evit:0.7', 'evit:0.7@3,6,9' or 'tome:8' -> PruneSpec (errors say the accepted forms)."""
    fix = "write --prune evit:KEEP_RATE[@BLOCK,BLOCK,...] (e.g. evit:0.7@3,6,9) or tome:R (e.g. tome:8)"
    method, _, arg = str(text).partition(":")
    if method not in METHODS or not arg:
        raise PruneError(f"unknown pruning spec {text!r}", fix)
    try:
        if method == "tome":
            spec = PruneSpec("tome", r=int(arg))
            if spec.r < 1:
                raise PruneError(f"ToMe r must be at least 1, got {spec.r}", "e.g. tome:8 merges 8 tokens per block")
            return spec
        rate, _, locs = arg.partition("@")
        keep = float(rate)
        loc = tuple(int(v) for v in locs.split(",")) if locs else None
    except ValueError as e:
        raise PruneError(f"cannot read pruning spec {text!r} ({e})", fix) from e
    if not 0.0 < keep <= 1.0:
        raise PruneError(f"EViT keep rate must be in (0, 1], got {keep}", "e.g. evit:0.7 keeps 70 % of the tokens")
    return PruneSpec("evit", keep_rate=keep, locations=loc)


class TokenBlocks(torch.nn.Sequential):
    """The model's blocks (same modules, same state-dict keys) with EViT pruning or ToMe merging
    after attention: weights load into a pruned model exactly as into the dense one."""

    def __init__(self, blocks, prefix: int, keep: list[int | None], merge: list[int], proportional: bool):
        super().__init__(*blocks)
        self.prefix, self.keep, self.merge, self.proportional = prefix, keep, merge, proportional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.ones_like(x[..., :1]) if self.proportional else None
        for i, blk in enumerate(self):
            x, size = self._block(blk, x, size, self.keep[i], self.merge[i])
        return x

    def _block(self, blk, x, size, keep: int | None, r: int):
        if keep is None and not r:
            return blk(x), size  # a block that neither prunes nor merges runs as it was
        a = blk.attn
        b, n, c = x.shape
        qkv = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        out, attn = T.attention(q, k, v, a.scale, size, weights=keep is not None)
        out = a.proj(a.norm(out.transpose(1, 2).reshape(b, n, a.attn_dim)))
        x = x + blk.drop_path1(blk.ls1(out))
        if r:
            x, size = T.bipartite_merge(x, size, k.mean(1), r, self.prefix)
        if keep is not None:
            x = T.evit_keep(x, attn[:, :, 0, self.prefix:].mean(1), keep, self.prefix)
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))), size


def apply_prune(model: torch.nn.Module, spec: str | PruneSpec) -> torch.nn.Module:
    """Prune/merge tokens in ``model`` (a timm VisionTransformer) in place; returns it."""
    spec = parse_prune(spec) if isinstance(spec, str) else spec
    blocks = _check_vit(model)
    depth, prefix = len(blocks), int(getattr(model, "num_prefix_tokens", 1))
    grid = model.patch_embed.grid_size
    n_patches = int(grid[0] * grid[1])
    if spec.method == "evit":
        locations = list(spec.locations) if spec.locations is not None else sorted(
            {max(0, depth // 4), depth // 2, max(0, 3 * depth // 4)})
        bad = [i for i in locations if not 0 <= i < depth]
        if bad:
            raise PruneError(f"EViT locations {bad} are beyond the model's {depth} blocks",
                             f"use block indices 0..{depth - 1}, e.g. evit:{spec.keep_rate:g}@"
                             f"{','.join(str(i) for i in (depth // 4, depth // 2, 3 * depth // 4))}")
        keep, merge = T.evit_plan(n_patches, depth, spec.keep_rate, locations), [0] * depth
        spec = PruneSpec("evit", spec.keep_rate, tuple(locations))
    else:
        try:
            merge = T.tome_plan(n_patches, depth, spec.r)
        except ValueError as e:
            raise PruneError(str(e), f"use a smaller r: at most {max_tome_r(n_patches, depth)} for this model's "
                                     f"{n_patches} patch tokens and {depth} blocks") from e
        keep = [None] * depth
    model.blocks = TokenBlocks(blocks, prefix, keep, merge, proportional=spec.method == "tome")
    per_block = tokens_per_block(n_patches, keep, merge)
    model.edgevit_prune = {"spec": str(spec), "method": spec.method, "patch_tokens_in": n_patches,
                           "tokens_per_block": per_block, "tokens_out": per_block[-1]}
    return model


def tokens_per_block(n: int, keep: list[int | None], merge: list[int]) -> list[int]:
    """Patch tokens entering the MLP of each block."""
    out = []
    for k, r in zip(keep, merge):
        n = n - r if r else n
        n = k + 1 if k is not None else n
        out.append(n)
    return out


def max_tome_r(n_patches: int, depth: int) -> int:
    best = 0
    for r in range(1, n_patches):
        try:
            T.tome_plan(n_patches, depth, r)
            best = r
        except ValueError:
            break
    return best


def _check_vit(model: torch.nn.Module):
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, TokenBlocks):
        raise PruneError("this model's tokens are already pruned", "apply one --prune spec to a dense model")
    ok = (isinstance(blocks, torch.nn.Sequential) and len(blocks) > 0 and hasattr(model, "patch_embed")
          and all(hasattr(b, "attn") and hasattr(getattr(b, "attn"), "qkv") and getattr(b.attn, "gate", None) is None
                  for b in blocks))
    if not ok:
        kind = type(model).__name__
        raise PruneError(f"token pruning needs a ViT/DeiT (blocks of self-attention over patch tokens); "
                         f"this model is a {kind}", "use a deit_* or vit_* model (`edgevit models`)")
    from timm.models.vision_transformer import Block

    odd = sorted({type(b).__name__ for b in blocks if type(b) is not Block})
    if odd:
        raise PruneError(f"token pruning supports timm's pre-norm ViT Block; this model has {', '.join(odd)}",
                         "use a deit_* or vit_* model (`edgevit models`)")
    if getattr(model, "dynamic_img_size", False):
        raise PruneError("token pruning needs a fixed input size", "build the model without dynamic_img_size")
    return blocks



def finetune(spec, data: str, out, epochs: int, lr: float = 1e-4, batch_size: int = 64, split: str = "val",
             val_fraction: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """A short fine-tune of the pruned model through the training engine, distilled (soft KD on the
    logits) from the dense model with the same weights; saves ``out/model/weights.safetensors``
    (the dense key layout) and points ``spec.checkpoint`` at it. Returns the fine-tuned model."""
    import dataclasses
    from pathlib import Path

    from ..data import data_config, eval_transform, load_split
    from ..manifest import write_json
    from ..models import create_model, sha256_file
    from ..pipeline import _save_weights  # the atomic writer training uses
    from .train import TrainConfig, fit, train_transform

    dense = create_model(dataclasses.replace(spec, prune=None))
    model = create_model(spec)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_epochs=0, seed=seed,
                      distillation="soft", alpha=0.5, tau=1.0)
    dcfg = data_config(model, spec.img_size)
    train_ds = load_split(data, "train", train_transform(dcfg, cfg), val_fraction, seed)
    val_ds = load_split(data, split, eval_transform(dcfg), val_fraction, seed)
    out = Path(out)
    fit(model, train_ds, val_ds, cfg, out / "finetune", dcfg, int(model.num_classes), f"{spec.name}+{spec.prune}",
        teacher=dense.eval(), single_head_kd=True)
    weights = out / "model" / "weights.safetensors"
    _save_weights(model, weights)
    write_json(out / "model" / "finetune.json", {"prune": spec.prune, "epochs": epochs, "lr": lr,
                                                 "teacher": "the dense model (soft KD)", "from": spec.checkpoint})
    spec.checkpoint, spec.pretrained = str(weights.resolve()), False
    spec.checkpoint_sha256 = sha256_file(weights)
    return model
