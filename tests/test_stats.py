"""Paired statistics of two classifiers on the same images, against figures computed by hand."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgevit.eval.stats import mcnemar_exact, pack, paired, unpack


def vectors(both: int, only_ref: int, only_cand: int, neither: int):
    ref = [1] * both + [1] * only_ref + [0] * only_cand + [0] * neither
    cand = [1] * both + [0] * only_ref + [1] * only_cand + [0] * neither
    return np.array(ref, bool), np.array(cand, bool)


def test_hand_computed_case():
    # 100 images: 50 both right, 10 only the reference, 4 only the candidate, 36 neither.
    p = paired(*vectors(50, 10, 4, 36))
    assert (p.images, p.only_ref_correct, p.only_candidate_correct) == (100, 10, 4)
    assert p.ref_top1 == pytest.approx(60.0) and p.top1 == pytest.approx(54.0)
    assert p.drop_pts == pytest.approx(6.0)
    # Agresti-Min: b~ = 10.5, c~ = 4.5, n~ = 102; d = 6/102; se = sqrt(15 - 36/102) / 102
    d, se = 6 / 102, math.sqrt(15 - 36 / 102) / 102
    assert p.ci95_pts[0] == pytest.approx(100 * (d - 1.959964 * se), abs=1e-3)  # -1.472
    assert p.ci95_pts[1] == pytest.approx(100 * (d + 1.959964 * se), abs=1e-3)  # 13.236
    assert p.ci95_pts[0] == pytest.approx(-1.472, abs=1e-3) and p.ci95_pts[1] == pytest.approx(13.236, abs=1e-3)
    # exact McNemar: 2 * P(X <= 4), X ~ Binomial(14, 1/2) = 2 * (1 + 14 + 91 + 364 + 1001) / 16384
    assert p.mcnemar_p == pytest.approx(2 * 1471 / 16384)
    assert p.budget_value(strict=False) == pytest.approx(6.0)
    assert p.budget_value(strict=True) == pytest.approx(13.236, abs=1e-3)


def test_identical_models_have_zero_drop_and_an_honest_width():
    p = paired(*vectors(300, 0, 0, 300))
    assert p.drop_pts == 0 and p.mcnemar_p == 1.0
    lo, hi = p.ci95_pts
    assert lo < 0 < hi and hi == pytest.approx(100 * 1.959964 / 602, abs=1e-3)  # 0.326 pts on 600 images


def test_mcnemar_small_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0


def test_mismatched_vectors_are_refused():
    with pytest.raises(ValueError):
        paired(np.ones(3, bool), np.ones(4, bool))


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_properties(pairs):
    ref, cand = (np.array(v, bool) for v in zip(*pairs))
    p = paired(ref, cand)
    assert p.drop_pts == pytest.approx(p.ref_top1 - p.top1)
    assert p.ci95_pts[0] <= p.drop_pts + 1e-9 or p.images < 3
    assert 0.0 <= p.mcnemar_p <= 1.0
    assert np.array_equal(unpack(pack(cand), len(cand)), cand)
