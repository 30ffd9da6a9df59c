"""ToMe (Bolya et al., 2023): merge the ``r`` most similar token pairs in every block, with
proportional attention. ``tome:8``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..ops import tokens as T
from .base import TransformError, register
from .tokens import MERGE, Tokens, add_part, token_facts

SEARCH_SHARES = (0.04, 0.065)  # the default search's r: these shares of the patch tokens, merged per block


@register
@dataclass(frozen=True)
class ToMe:
    r: int

    name: ClassVar[str] = "tome"
    changes_shapes: ClassVar[bool] = False
    forms: ClassVar[str] = "tome:R"
    example: ClassVar[str] = "tome:8"
    needs: ClassVar[frozenset[str]] = frozenset({"metric"})  # it matches tokens by their keys
    proportional: ClassVar[bool] = True  # a merged token counts as the patches it stands for
    stage: ClassVar[int] = MERGE

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
        add_part(model, self)

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"spec": str(self), "method": self.name, **token_facts(model)}

    def plan(self, n: int, block: int, depth: int, patches: int) -> int:
        """``r`` in every block; at most half the patch tokens of a block can merge."""
        if self.r > n // 2:
            raise TransformError(f"r={self.r} is more than block {block} allows: it has {n} patch tokens, so at "
                                 f"most {n // 2} can merge (ToMe merges half the tokens at most per block)",
                                 f"use a smaller r: at most {max_r(patches, depth)} for this model's {patches} "
                                 f"patch tokens and {depth} blocks")
        return self.r

    def reduce(self, t: Tokens, n: int, removed: int, prefix: int) -> Tokens:
        x, size = T.bipartite_merge(t.x, t.size, t.metric, removed, prefix)
        return Tokens(x, size, None, None)

    def scaled(self, n_from: int, n_to: int) -> ToMe:
        return ToMe(max(1, round(self.r * n_to / n_from)))  # tokens merged per block scale with the tokens

    @classmethod
    def search_space(cls, depth: int, n_tokens: int) -> list[str]:
        return [str(cls(r)) for r in search_rs(depth, n_tokens)]

    @classmethod
    def search_follow(cls, depth: int, n_tokens: int, share: float) -> str | None:
        rs = search_rs(depth, n_tokens)
        return str(cls(max(1, round(rs[0] * share)))) if rs else None


def max_r(patches: int, depth: int) -> int:
    """The largest r that ToMe alone can merge in each of ``depth`` blocks of ``patches`` patch tokens."""
    best = 0
    for r in range(1, patches):
        if any(r > (patches - i * r) // 2 for i in range(depth)):
            break
        best = r
    return best


def search_rs(depth: int, n_tokens: int) -> list[int]:
    """About 4 % and 6.5 % of the tokens merged per block, within what fits."""
    cap = max_r(n_tokens, depth)
    return sorted({min(cap, max(1, round(f * n_tokens))) for f in SEARCH_SHARES} - {0})
