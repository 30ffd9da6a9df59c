"""ToMe (Bolya et al., 2023): merge the ``r`` most similar token pairs in every block, with
proportional attention. ``tome:8``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import TransformError, register
from .tokens import add_part, token_facts


@register
@dataclass(frozen=True)
class ToMe:
    r: int

    name: ClassVar[str] = "tome"
    changes_shapes: ClassVar[bool] = False
    forms: ClassVar[str] = "tome:R"

    @classmethod
    def parse(cls, arg: str) -> ToMe:
        try:
            r = int(arg)
        except ValueError as e:
            raise TransformError(f"cannot read tome:{arg} ({e})", "write tome:R, e.g. tome:8") from e
        if r < 1:
            raise TransformError(f"ToMe r must be at least 1, got {r}", "e.g. tome:8 merges 8 tokens per block")
        return cls(r)

    def __str__(self) -> str:
        return f"tome:{self.r}"

    def apply(self, model: torch.nn.Module) -> None:
        add_part(model, self.name, self.r)

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"spec": str(self), "method": self.name, **token_facts(model)}
