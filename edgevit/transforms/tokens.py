"""The host adapter of the token transforms on timm ViT/DeiT models, and what a token transform supplies.

The algorithms are pure tensor functions (:mod:`edgevit.ops.tokens`). A token transform (``evit.py``,
``tome.py``, or any registered the same way) is a frozen object that supplies what
:class:`TokenPart` lists: its plan (the patch tokens it removes at each block), its reduction (the
tensor step after attention) with the inputs it reads, its scaling to another token count and its
search entries. :func:`add_part` swaps a model's ``blocks`` for :class:`TokenBlocks`, which runs the
same block modules (same weights, same state-dict keys) and applies the parts' reductions between
attention and MLP. The plan is fixed when a transform is applied, so every shape is static. Special
tokens (class, distillation, registers) are never pruned or merged, so distilled models keep both
heads. Token transforms compose (``evit:0.7+tome:4``): each adds its part and the blocks are planned
again; within a block the parts run by ``stage`` (pruning, which ranks by the block's attention,
before merging), in spec order within a stage.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Protocol

import torch

from ..ops import tokens as T
from .base import Transform, TransformError

PRUNE, MERGE = 0, 1  # the stages of a block, in the order they run
Step = tuple[str, int, int]  # (part name, patch tokens entering the step, tokens it removes)


class Tokens(NamedTuple):
    """What a block hands its parts after attention. A reduction returns every per-token tensor it is
    given (``x``, ``size``, ``metric``) reduced the same way, so the next part sees them aligned."""

    x: torch.Tensor  # (B, N, C), the prefix tokens first
    size: torch.Tensor | None  # (B, N, 1): patches each token stands for (when some part is proportional)
    metric: torch.Tensor | None  # (B, N, D): the keys, averaged over heads (when a part needs "metric")
    cls_attn: torch.Tensor | None  # (B, N - prefix): the class token's attention to each patch token,
    # averaged over heads (when a part needs "cls_attn"); it ranks the block's tokens before any reduction

    def each(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Tokens:
        """``fn`` applied to x, size and metric (a reduction that moves every token the same way);
        cls_attn, which ranked the tokens before, is dropped."""
        return Tokens(fn(self.x), *(None if t is None else fn(t) for t in (self.size, self.metric)), None)


class TokenPart(Transform, Protocol):
    """What a token transform supplies besides :class:`~edgevit.transforms.base.Transform` (its
    ``apply`` resolves its defaults and calls :func:`add_part`; its ``describe`` adds
    :func:`token_facts`). Optional, for the default search space of `edgevit optimize`:
    ``search_lead(depth, n_tokens)`` -> [(entry, share)]: entries another transform may follow in the
    same blocks, at ``share`` of its lightest entry; ``search_follow(depth, n_tokens, share)`` -> that
    entry of this transform, or None."""

    needs: ClassVar[frozenset[str]]  # what the reduction reads of Tokens besides x: "cls_attn", "metric"
    proportional: ClassVar[bool]  # token sizes are tracked and attention is proportional to them
    stage: ClassVar[int]  # PRUNE or MERGE: where its reduction runs within a block

    def plan(self, n: int, block: int, depth: int, patches: int) -> int | None:
        """Patch tokens removed at ``block`` (of ``depth``) from the ``n`` entering this step, the model
        having ``patches``; None where it does not act. Raises TransformError (what and fix) when it
        does not fit."""
        ...

    def reduce(self, t: Tokens, n: int, removed: int, prefix: int) -> Tokens:
        """The step after attention: ``n`` patch tokens in (after ``prefix`` special ones), ``removed``
        fewer out (the plan's, static)."""
        ...

    def scaled(self, n_from: int, n_to: int) -> TokenPart:
        """The same transform for a model of ``n_to`` patch tokens instead of ``n_from``."""
        ...

    @classmethod
    def search_space(cls, depth: int, n_tokens: int) -> list[str]:
        """The specs `edgevit optimize` tries by default on a ViT of ``depth`` blocks, ``n_tokens`` patch tokens."""
        ...


class TokenBlocks(torch.nn.Sequential):
    """The model's blocks (same modules, same state-dict keys) with the token parts' reductions after
    attention: weights load into a pruned model exactly as into the dense one. ``parts``: the token
    transforms it composes by name, in spec order; ``plan``: per block, its steps in the order they run."""

    def __init__(self, blocks, prefix: int, parts: dict[str, TokenPart], plan: list[tuple[Step, ...]]):
        super().__init__(*blocks)
        self.prefix, self.parts, self.plan = prefix, dict(parts), plan
        self.proportional = any(p.proportional for p in parts.values())  # e.g. ToMe's, once tokens merge
        self.needs = [frozenset().union(*(parts[name].needs for name, _, _ in steps)) for steps in plan]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.ones_like(x[..., :1]) if self.proportional else None
        for blk, steps, needs in zip(self, self.plan, self.needs):
            # a block where no part acts runs as it was
            x, size = self._block(blk, x, size, steps, needs) if steps else (blk(x), size)
        return x

    def _block(self, blk, x, size, steps: tuple[Step, ...], needs: frozenset[str]):
        a = blk.attn
        b, n, c = x.shape
        qkv = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        out, attn = T.attention(q, k, v, a.scale, size, weights="cls_attn" in needs)
        out = a.proj(a.norm(out.transpose(1, 2).reshape(b, n, a.attn_dim)))
        x = x + blk.drop_path1(blk.ls1(out))
        t = Tokens(x, size, k.mean(1) if "metric" in needs else None,
                   attn[:, :, 0, self.prefix:].mean(1) if attn is not None else None)
        for name, n_in, removed in steps:
            t = self.parts[name].reduce(t, n_in, removed, self.prefix)
        return t.x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t.x)))), t.size


def add_part(model: torch.nn.Module, part: TokenPart) -> None:
    """Add a token transform (its defaults resolved, as ``describe`` records it) to ``model`` and plan its
    blocks again."""
    blocks = _check_vit(model)
    parts = dict(blocks.parts) if isinstance(blocks, TokenBlocks) else {}
    if part.name in parts:
        raise TransformError(f"{part.name} appears twice in one transform spec", f"give {part.name} once")
    parts[part.name] = part
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    plan = plan_blocks(list(parts.values()), patch_tokens(model), len(blocks))
    model.blocks = TokenBlocks(list(blocks), prefix, parts, plan)


def plan_blocks(parts: list[TokenPart], patches: int, depth: int) -> list[tuple[Step, ...]]:
    """Per block, the steps of ``parts`` in the order they run (by stage, then as given)."""
    ordered = sorted(parts, key=lambda p: p.stage)
    plan, n = [], patches
    for i in range(depth):
        steps: list[Step] = []
        for p in ordered:
            removed = p.plan(n, i, depth, patches)
            if removed is None:
                continue
            if not 0 <= removed < n:
                raise TransformError(f"{p} would remove {removed} of the {n} patch tokens of block {i}",
                                     "keep at least one patch token in every block")
            if "cls_attn" in p.needs and steps:
                raise TransformError(f"{p} ranks block {i}'s tokens by the class token's attention, which "
                                     f"{steps[-1][0]} has already changed there", "apply them at different blocks")
            steps.append((p.name, n, removed))
            n -= removed
        plan.append(tuple(steps))
    return plan


def patch_tokens(model: torch.nn.Module) -> int:
    grid = model.patch_embed.grid_size
    return int(grid[0] * grid[1])


def token_facts(model: torch.nn.Module) -> dict[str, Any]:
    """Patch tokens in, per block and out of a model's token transforms (for manifests and reports)."""
    n = patch_tokens(model)
    per_block = tokens_per_block(n, model.blocks.plan)
    return {"patch_tokens_in": n, "tokens_per_block": per_block, "tokens_out": per_block[-1]}


def tokens_per_block(n: int, plan: list[tuple[Step, ...]]) -> list[int]:
    """Patch tokens entering the MLP of each block."""
    out = []
    for steps in plan:
        n -= sum(removed for _, _, removed in steps)
        out.append(n)
    return out


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
