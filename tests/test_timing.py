"""The latency estimator on synthetic timings: stalls injected into some runs and whole rounds slowed
must not move the paired ratio, its interval must cover the truth, ties are called ties, and the tie
rule hands a speed tie to the more accurate candidate."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevit.eval.timing import RoundTimes, choose, estimate, paired_ratio, round_figures, time_rounds


def synthetic(true_ms, rounds=60, iters=3, stall_p=0.2, slow_round_p=0.2, seed=0):
    """Timings of subjects with true latencies ``true_ms``: 2 % jitter, a fraction of runs stalled by
    +50..300 %, and whole rounds slowed (a busy neighbour) by up to 2x for every subject alike."""
    rng = np.random.default_rng(seed)
    slow = np.where(rng.random(rounds) < slow_round_p, rng.uniform(1.3, 2.0, rounds), 1.0)
    out = []
    for t in true_ms:
        x = t * slow[:, None] * rng.normal(1.0, 0.02, (rounds, iters))
        stalls = rng.random((rounds, iters)) < stall_p
        x[stalls] *= rng.uniform(1.5, 4.0, stalls.sum())
        out.append(x)
    return np.stack(out)


def test_stalls_and_slow_rounds_do_not_move_the_ratio_and_the_interval_covers_it():
    t = synthetic([6.0, 10.0])
    r = paired_ratio(t[0], t[1], ("a", "b"))
    assert r.ci95[0] <= 0.6 <= r.ci95[1] and abs(r.ratio - 0.6) < 0.02 and r.halfwidth_pct < 5
    assert r.verdict == "faster" and "a is faster than b" in r.text()
    # the plain mean of all runs is dragged up by the stalls and the slow rounds; the estimate is not
    assert abs(estimate(t[0]) - 6.0) < 0.4 and t[0].mean() > 7.5


def test_an_unpaired_comparison_would_be_fooled_by_slow_rounds():
    """Half the rounds slow for both: the ratio within each round stays 1.0."""
    rng = np.random.default_rng(1)
    slow = np.repeat([1.0, 2.0], 20)
    a = 10.0 * slow[:, None] * rng.normal(1, 0.01, (40, 2))
    b = 10.0 * slow[:, None] * rng.normal(1, 0.01, (40, 2))
    r = paired_ratio(a, b)
    assert r.verdict == "tied" and abs(r.ratio - 1.0) < 0.02 and "undecided" in r.text()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(ratio=st.floats(0.3, 3.0), seed=st.integers(0, 10_000))
def test_ratio_recovered_under_injected_stalls(ratio, seed):
    t = synthetic([10.0 * ratio, 10.0], rounds=80, iters=2, seed=seed)
    r = paired_ratio(t[0], t[1])
    assert abs(r.ratio / ratio - 1) < 0.05
    assert r.ci95[0] <= r.ratio <= r.ci95[1]


def test_noisy_ratio_says_so_in_words():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(5, 20, (10, 1)), rng.uniform(5, 20, (10, 1))
    r = paired_ratio(a, b, ("x", "y"), figure="min")
    assert r.noisy and "noisy" in r.text() and "more --rounds" in r.text()


def test_round_figures():
    t = np.array([[1.0, 2.0, 3.0, 4.0, 100.0]])
    assert round_figures(t, "min")[0] == 1.0 and round_figures(t, "q25")[0] == 2.0
    assert round_figures(t, "median")[0] == 3.0 and round_figures(t, "mean")[0] == 22.0


def test_tie_rule_gives_a_speed_tie_to_the_smaller_drop():
    t = synthetic([10.0, 10.1, 14.0], rounds=40, iters=2, seed=3)
    rt = RoundTimes(["a", "b", "c"], t)
    ch = choose(rt, drops=[0.9, 0.1, -1.0])
    assert ch.fastest in (0, 1) and set(ch.tied) == {0, 1}  # c is clearly slower: its drop does not matter
    assert ch.winner == 1 and "wins on accuracy" in ch.why
    assert choose(rt).winner == ch.fastest  # without drops the fastest wins
    clear = choose(RoundTimes(["a", "b"], synthetic([5.0, 10.0], seed=4)), drops=[0.9, 0.0])
    assert clear.winner == 0 and clear.tied == [0] and "faster than every other" in clear.why


def test_time_rounds_randomises_order_and_records_context():
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    rt = time_rounds(fns, ["a", "b", "c"], rounds=6, iters=2, warmup=1, round_warmup=0, seed=5, threads=2)
    assert rt.times.shape == (3, 6, 2) and len(rt.orders) == 6
    assert len({tuple(o) for o in rt.orders}) > 1  # a fresh order each round
    assert calls[:3] == [0, 1, 2] and len(calls) == 3 + 3 * 6 * 2
    assert rt.context["threads"] == 2 and rt.context["isa_class"] and "affinity" in rt.context
    back = RoundTimes.from_dict(rt.to_dict())
    assert back.labels == rt.labels and back.times.shape == rt.times.shape
    with pytest.raises(ValueError):
        time_rounds(fns, ["a", "b", "c"], rounds=0)


def _fake_timer(monkeypatch, noise_of):
    """Replace the stopwatch: subject ``i`` takes ``10 ms`` × (1 + its noise × a random stall)."""
    import edgevit.eval.timing as T

    rng = np.random.default_rng(7)

    def timed(fn, warmup, iters):
        i = fn()
        return 10.0 * (1 + i) * (1 + noise_of[i] * rng.exponential(1.0, iters))

    monkeypatch.setattr(T, "_timed", timed)
    return [lambda i=i: i for i in range(len(noise_of))]


def test_a_quiet_machine_stops_at_the_rounds_asked(monkeypatch):
    fns = _fake_timer(monkeypatch, [0.01, 0.01])
    rt = time_rounds(fns, ["a", "b"], rounds=30, iters=1, warmup=0, round_warmup=0, precision_pct=5)
    assert rt.times.shape == (2, 30, 1) and rt.context["rounds_run"] == 30
    assert rt.context["stopped"] == "every ratio known to ±5 %" and rt.ratio(1, 0).halfwidth_pct <= 5


def test_a_noisy_machine_is_timed_longer_until_the_interval_is_narrow(monkeypatch):
    fns = _fake_timer(monkeypatch, [0.6, 0.6, 0.01])
    rt = time_rounds(fns, ["a", "b", "c"], rounds=20, iters=1, warmup=0, round_warmup=0, precision_pct=5,
                     max_rounds=2000)
    assert 20 < rt.context["rounds_run"] < 2000 and len(rt.orders) == rt.context["rounds_run"]
    assert max(rt.ratio(i, j).halfwidth_pct for i in range(3) for j in (0, 2) if i != j) <= 5
    # without a precision it answers after the rounds asked, wider
    fixed = time_rounds(fns, ["a", "b", "c"], rounds=20, iters=1, warmup=0, round_warmup=0)
    assert fixed.times.shape[1] == 20 and fixed.ratio(1, 0).halfwidth_pct > 5


def test_the_cap_on_rounds_is_reported(monkeypatch):
    fns = _fake_timer(monkeypatch, [2.0, 2.0])
    rt = time_rounds(fns, ["a", "b"], rounds=10, iters=1, warmup=0, round_warmup=0, precision_pct=1, max_rounds=25)
    assert rt.context["rounds_run"] == 25 and rt.context["stopped"].startswith("max rounds (25) reached")
