"""EViT (Liang et al., 2022): keep the patch tokens the class token attends to most, fuse the rest
into one token, at a few blocks. ``evit:0.7`` (a quarter, half and three quarters of depth) or
``evit:0.7@3,6,9``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..ops import tokens as T
from .base import TransformError, register
from .tokens import PRUNE, Tokens, _check_vit, add_part, token_facts

FIX = "write evit:KEEP_RATE[@BLOCK,BLOCK,...], e.g. evit:0.7 or evit:0.7@3,6,9"
SEARCH_RATES = (0.7, 0.5, 0.4)  # the default search's keep rates
SEARCH_LEADS = ((0.7, 2 / 3), (0.5, 1 / 3))  # with another transform after it: its share of that one's lightest


@register
@dataclass(frozen=True)
class EViT:
    keep_rate: float
    locations: tuple[int, ...] | None = None  # None: a quarter, half and three quarters of depth

    name: ClassVar[str] = "evit"
    changes_shapes: ClassVar[bool] = False
    forms: ClassVar[str] = "evit:KEEP[@BLOCKS]"
    example: ClassVar[str] = "evit:0.7@3,6,9"
    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn"})  # it ranks by the class token's attention
    proportional: ClassVar[bool] = False
    stage: ClassVar[int] = PRUNE

    @classmethod
    def parse(cls, arg: str) -> EViT:
        rate, _, locs = arg.partition("@")
        try:
            keep = float(rate)
            loc = tuple(int(v) for v in locs.split(",")) if locs else None
        except ValueError as e:
            raise TransformError(f"cannot read evit:{arg} ({e})", FIX) from e
        if not 0.0 < keep <= 1.0:
            raise TransformError(f"EViT keep rate must be in (0, 1], got {keep}",
                                 "e.g. evit:0.7 keeps 70 % of the tokens")
        return cls(keep, loc)

    def __str__(self) -> str:
        loc = "@" + ",".join(map(str, self.locations)) if self.locations is not None else ""
        return f"evit:{self.keep_rate:g}{loc}"

    def apply(self, model: torch.nn.Module) -> None:
        depth = len(_check_vit(model))
        default = sorted({max(0, depth // 4), depth // 2, max(0, 3 * depth // 4)})
        locations = list(self.locations) if self.locations is not None else default
        bad = [i for i in locations if not 0 <= i < depth]
        if bad:
            raise TransformError(f"EViT locations {bad} are beyond the model's {depth} blocks",
                                 f"use block indices 0..{depth - 1}, e.g. evit:{self.keep_rate:g}@"
                                 f"{','.join(map(str, default))}")
        add_part(model, EViT(self.keep_rate, tuple(locations)))

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"spec": str(model.blocks.parts[self.name]), "method": self.name, **token_facts(model)}

    def plan(self, n: int, block: int, depth: int, patches: int) -> int | None:
        """At its locations: keep ceil(keep_rate × n) (at least 1) and fuse the rest into one token; it
        acts wherever that keeps fewer than ``n`` (even when the fused token leaves ``n``: it reorders)."""
        keep = max(1, math.ceil(self.keep_rate * n))
        return n - keep - 1 if block in (self.locations or ()) and keep < n else None

    def reduce(self, t: Tokens, n: int, removed: int, prefix: int) -> Tokens:
        """One ranking by the class token's attention orders x, the sizes and the metric alike."""
        x, size, metric = T.evit_prune(t.x, t.cls_attn, n - removed - 1, prefix, t.size, t.metric)
        return Tokens(x, size, metric, None)

    def scaled(self, n_from: int, n_to: int) -> EViT:
        return self  # a keep rate is a share of the tokens: it holds for any token count

    @staticmethod
    def search_locations(depth: int) -> list[tuple[int, int, int]]:
        """A quarter, half and three quarters of depth, then one and two blocks earlier (earlier pruning
        saves more, costs more accuracy); block 0 and repeated blocks are left out."""
        q, h, t = max(0, depth // 4), depth // 2, max(0, 3 * depth // 4)
        locs: list[tuple[int, int, int]] = []
        for shift in (0, 1, 2):
            loc = (q - shift, h - shift, t - shift)
            if min(loc) >= 1 and len(set(loc)) == 3 and loc not in locs:
                locs.append(loc)
        return locs

    @classmethod
    def search_space(cls, depth: int, n_tokens: int) -> list[str]:
        return [str(cls(k, loc)) for k in SEARCH_RATES for loc in cls.search_locations(depth)]

    @classmethod
    def search_lead(cls, depth: int, n_tokens: int) -> list[tuple[str, float]]:
        """EViT 0.7 and 0.5 at a quarter, half and three quarters of depth, with the transform after it
        at two thirds and a third of its lightest entry (EViT has already cut the tokens)."""
        q, h, t = max(0, depth // 4), depth // 2, max(0, 3 * depth // 4)
        return [(str(cls(k, (q, h, t))), share) for k, share in SEARCH_LEADS]
