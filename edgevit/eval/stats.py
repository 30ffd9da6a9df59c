"""Paired comparison of two classifiers scored on the same images: the top-1 drop, its 95 % interval
and the exact McNemar test, from the images only one of them gets right. A drop is never shown
without them: 600 images cannot resolve a 0.3-point difference, and these say so."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def paired_drop_ci(only_ref: int, only_art: int, n: int, z: float = 1.959964) -> list[float]:
    """95 % interval of the top-1 drop (points) of two models scored on the same ``n`` images, from the
    images only one gets right (Agresti-Min 2005: a half image added to each discordant cell, so that
    0 vs 0 discordant still gives an interval of honest width)."""
    if n <= 0:
        return [float("nan"), float("nan")]
    b, c, m = only_ref + 0.5, only_art + 0.5, n + 2
    d = (b - c) / m
    se = max(0.0, (b + c) - (b - c) ** 2 / m) ** 0.5 / m
    return [round(100 * (d - z * se), 3), round(100 * (d + z * se), 3)]


@dataclass(frozen=True)
class Paired:
    images: int
    ref_top1: float  # %
    top1: float  # %
    drop_pts: float  # ref_top1 - top1
    ci95_pts: tuple[float, float]  # Agresti-Min interval of the drop
    only_ref_correct: int
    only_candidate_correct: int
    mcnemar_p: float  # exact two-sided: is the drop distinguishable from 0 on these images?

    def budget_value(self, strict: bool) -> float:
        """The figure a drop budget is held against: the point estimate, or with ``strict`` the
        interval's upper bound (the drop is then within budget with 97.5 % confidence)."""
        return self.ci95_pts[1] if strict else self.drop_pts

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95_pts": list(self.ci95_pts)}

    def text(self) -> str:
        lo, hi = self.ci95_pts
        return (f"{self.drop_pts:+.2f} pts [{lo:+.2f}, {hi:+.2f}] (only ref right {self.only_ref_correct}, "
                f"only this right {self.only_candidate_correct}, of {self.images})")


def paired(ref_correct: np.ndarray, correct: np.ndarray) -> Paired:
    """Compare per-image correctness (booleans, same images in the same order) of a reference
    model and a candidate."""
    ref_correct, correct = np.asarray(ref_correct, bool), np.asarray(correct, bool)
    if ref_correct.shape != correct.shape or ref_correct.ndim != 1 or not len(correct):
        raise ValueError(f"need two equal-length 1-d correctness vectors, got {ref_correct.shape} and {correct.shape}")
    n = len(correct)
    b = int((ref_correct & ~correct).sum())
    c = int((correct & ~ref_correct).sum())
    lo, hi = paired_drop_ci(b, c, n)
    return Paired(images=n, ref_top1=100.0 * ref_correct.mean(), top1=100.0 * correct.mean(),
                  drop_pts=100.0 * (b - c) / n, ci95_pts=(lo, hi), only_ref_correct=b, only_candidate_correct=c,
                  mcnemar_p=mcnemar_exact(b, c))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: under "no difference" the discordant images split
    Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def pack(correct: np.ndarray) -> str:
    """Per-image correctness as a short hex string (search logs keep it to pair candidates later)."""
    return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)
