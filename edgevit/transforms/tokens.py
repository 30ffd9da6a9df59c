"""The host adapter of the token transforms (EViT pruning, ToMe merging) on timm ViT/DeiT models.

The algorithms are pure tensor functions in :mod:`edgevit.ops.tokens`; this file swaps a model's
``blocks`` for :class:`TokenBlocks`, which runs the same block modules (same weights, same
state-dict keys) and applies them between attention and MLP. The plan (tokens per block) is fixed
when a transform is applied, so every shape is static. Special tokens (class, distillation,
registers) are never pruned or merged, so distilled models keep both heads. Token transforms
compose (``evit:0.7+tome:4``): each adds its part and the blocks are planned again.
"""
from __future__ import annotations

from typing import Any

import torch

from ..ops import tokens as T
from .base import TransformError


class TokenBlocks(torch.nn.Sequential):
    """The model's blocks (same modules, same state-dict keys) with ToMe merging and/or EViT pruning
    after attention: weights load into a pruned model exactly as into the dense one. ``parts`` holds
    the token transforms it composes ({"evit": (keep_rate, locations), "tome": r})."""

    def __init__(self, blocks, prefix: int, parts: dict[str, Any], keep: list[int | None], merge: list[int]):
        super().__init__(*blocks)
        self.prefix, self.parts, self.keep, self.merge = prefix, dict(parts), keep, merge
        self.proportional = "tome" in parts  # ToMe's proportional attention once tokens merge

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
        metric = k.mean(1) if r else None  # ToMe's similarity: the keys, averaged over heads
        if keep is not None:  # pruning first: the attention that ranks the tokens is this block's
            cls_attn = attn[:, :, 0, self.prefix:].mean(1)
            if r:
                metric = T.evit_keep(metric, cls_attn, keep, self.prefix)
            if size is not None:
                size = T.evit_keep_size(size, cls_attn, keep, self.prefix)
            x = T.evit_keep(x, cls_attn, keep, self.prefix)
        if r:
            x, size = T.bipartite_merge(x, size, metric, r, self.prefix)
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))), size


def add_part(model: torch.nn.Module, method: str, part: Any) -> None:
    """Add a token transform (``method`` with its resolved ``part``) to ``model`` and plan its blocks."""
    blocks = _check_vit(model)
    parts = dict(blocks.parts) if isinstance(blocks, TokenBlocks) else {}
    if method in parts:
        raise TransformError(f"{method} appears twice in one transform spec", f"give {method} once")
    parts[method] = part
    depth, prefix = len(blocks), int(getattr(model, "num_prefix_tokens", 1))
    n = patch_tokens(model)
    rate, locations = parts.get("evit", (None, None))
    try:
        keep, merge = T.token_plan(n, depth, rate, locations, parts.get("tome", 0))
    except ValueError as e:
        raise TransformError(str(e), f"use a smaller r: at most {max_tome_r(n, depth)} for this model's {n} patch "
                                     f"tokens and {depth} blocks") from e
    model.blocks = TokenBlocks(list(blocks), prefix, parts, keep, merge)


def patch_tokens(model: torch.nn.Module) -> int:
    grid = model.patch_embed.grid_size
    return int(grid[0] * grid[1])


def token_facts(model: torch.nn.Module) -> dict[str, Any]:
    """Patch tokens in, per block and out of a model's token transforms (for manifests and reports)."""
    blocks = model.blocks
    n = patch_tokens(model)
    per_block = tokens_per_block(n, blocks.keep, blocks.merge)
    return {"patch_tokens_in": n, "tokens_per_block": per_block, "tokens_out": per_block[-1]}


def tokens_per_block(n: int, keep: list[int | None], merge: list[int]) -> list[int]:
    """Patch tokens entering the MLP of each block."""
    out = []
    for k, r in zip(keep, merge):
        n = (k + 1 if k is not None else n) - r
        out.append(n)
    return out


def max_tome_r(n_patches: int, depth: int) -> int:
    best = 0
    for r in range(1, n_patches):
        try:
            T.token_plan(n_patches, depth, r=r)
            best = r
        except ValueError:
            break
    return best


def _check_vit(model: torch.nn.Module):
    blocks = getattr(model, "blocks", None)
    ok = (isinstance(blocks, torch.nn.Sequential) and len(blocks) > 0 and hasattr(model, "patch_embed")
          and all(hasattr(b, "attn") and hasattr(b.attn, "qkv") and getattr(b.attn, "gate", None) is None
                  for b in blocks))
    if not ok:
        kind = type(model).__name__
        raise TransformError(f"token pruning needs a ViT/DeiT (blocks of self-attention over patch tokens); "
                         f"this model is a {kind}", "use a deit_* or vit_* model (`edgevit models`)")
    from timm.models.vision_transformer import Block

    odd = sorted({type(b).__name__ for b in blocks if type(b) is not Block})
    if odd:
        raise TransformError(f"token pruning supports timm's pre-norm ViT Block; this model has {', '.join(odd)}",
                         "use a deit_* or vit_* model (`edgevit models`)")
    if getattr(model, "dynamic_img_size", False):
        raise TransformError("token pruning needs a fixed input size", "build the model without dynamic_img_size")
    return blocks
