"""A toy token transform, defined in one file the way a new one would be: ``droplast:K[@BLOCK]`` drops
the K last patch tokens at one block (default: half depth). It supplies what
:class:`edgevit.transforms.tokens.TokenPart` asks (its plan, reduction, the inputs it reads, its scaling,
its search entries and its forms) and registers itself. tests/test_toy_transform.py shows that
``--prune``, ``edgevit prune --spec``, their help and `edgevit optimize`'s search space take it with no
other edit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from edgevit.transforms import TransformError, register
from edgevit.transforms.tokens import PRUNE, Tokens, add_part, token_facts

FIX = "write droplast:K[@BLOCK], e.g. droplast:4@1"


@register
@dataclass(frozen=True)
class DropLast:
    k: int
    block: int | None = None  # None: half depth

    name: ClassVar[str] = "droplast"
    changes_shapes: ClassVar[bool] = False
    forms: ClassVar[str] = "droplast:K[@BLOCK]"
    example: ClassVar[str] = "droplast:4@1"
    needs: ClassVar[frozenset[str]] = frozenset()  # neither attention weights nor the keys
    proportional: ClassVar[bool] = False
    stage: ClassVar[int] = PRUNE

    @classmethod
    def parse(cls, arg: str) -> DropLast:
        k, _, at = arg.partition("@")
        try:
            return cls(int(k), int(at) if at else None)
        except ValueError as e:
            raise TransformError(f"cannot read droplast:{arg} ({e})", FIX) from e

    def __str__(self) -> str:
        return f"droplast:{self.k}" + (f"@{self.block}" if self.block is not None else "")

    def apply(self, model: torch.nn.Module) -> None:
        depth = len(model.blocks)
        block = depth // 2 if self.block is None else self.block
        if not 0 <= block < depth:
            raise TransformError(f"droplast block {block} is beyond the model's {depth} blocks", FIX)
        add_part(model, DropLast(self.k, block))

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"spec": str(model.blocks.parts[self.name]), "method": self.name, **token_facts(model)}

    def plan(self, n: int, block: int, depth: int, patches: int) -> int | None:
        if block != self.block:
            return None
        if not 0 < self.k < n:
            raise TransformError(f"droplast:{self.k} cannot drop {self.k} of block {block}'s {n} patch tokens",
                                 f"drop 1 to {n - 1}")
        return self.k

    def reduce(self, t: Tokens, n: int, removed: int, prefix: int) -> Tokens:
        return t.each(lambda v: v[:, : prefix + n - removed])

    def scaled(self, n_from: int, n_to: int) -> DropLast:
        return DropLast(max(1, round(self.k * n_to / n_from)), self.block)

    @classmethod
    def search_space(cls, depth: int, n_tokens: int) -> list[str]:
        return [str(cls(max(1, n_tokens // 8), depth // 2))]
