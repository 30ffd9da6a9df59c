"""EViT (Liang et al., 2022): keep the patch tokens the class token attends to most, fuse the rest
into one token, at a few blocks. ``evit:0.7`` (a quarter, half and three quarters of depth) or
``evit:0.7@3,6,9``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import TransformError, register
from .tokens import _check_vit, add_part, token_facts

FIX = "write evit:KEEP_RATE[@BLOCK,BLOCK,...], e.g. evit:0.7 or evit:0.7@3,6,9"


@register
@dataclass(frozen=True)
class EViT:
    keep_rate: float
    locations: tuple[int, ...] | None = None  # None: a quarter, half and three quarters of depth

    name: ClassVar[str] = "evit"
    changes_shapes: ClassVar[bool] = False
    forms: ClassVar[str] = "evit:KEEP[@BLOCKS]"

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
        add_part(model, self.name, (self.keep_rate, tuple(locations)))

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        rate, locations = model.blocks.parts[self.name]
        return {"spec": str(EViT(rate, locations)), "method": self.name, **token_facts(model)}
