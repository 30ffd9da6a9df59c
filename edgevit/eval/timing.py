"""Speed decisions that hold on a shared, noisy CPU: many short rounds in random order, a robust figure
per subject, and the bootstrap 95 % interval of every paired ratio.

The estimator. On a shared machine interference only ever *adds* time: another process takes the core,
the caches are cold, the clock drops. So each subject's figure is the **median over rounds of each
round's lower quartile** (``ROUND_QUANTILE`` = 25): the quartile drops the stalls inside a round, the
median drops the rounds the machine was busy for. The default rounds are as short as they go, one run of
each subject (``edgevit bench --compare``, the search's head-to-head, the benchmarks), because what
cancels interference best is pairing: A's and B's runs of a round are adjacent in time, so whatever
slowed one slowed the other. Measured on DeiT-Ti @224 (ORT int8 / ORT fp32, a 2-core AVX-512 VNNI
machine, ``benchmarks/latency_noise.py``, ``benchmarks/results/latency_noise.json``): with a busy loop
on one core, the one-run rounds moved the ratio 10.6 % from its quiet value, with intervals of ±5.6-10.1
%. Four-run rounds, whatever the per-round figure (min, q25, median, mean), moved it 17-32 %. The
protocol used before (3 rounds of 100 runs, ratio of the rounds' medians) moved it 13.7 % and gave no
interval at all.

The paired ratio. Subjects A and B run in the same rounds, one after the other in a random order, so
a slow round slows both: the ratio of A's and B's figures *within a round* cancels it. The ratio is the
median over rounds of those per-round ratios, and its 95 % interval comes from resampling the rounds
(both subjects' figures of one round travel together: a paired bootstrap). An interval that spans 1.0
means these rounds cannot tell the two apart, and the verdict says so in words.

How many rounds. A fixed count answers a busy machine vaguely: the same 200 rounds gave ±3.4-4.6 % quiet
and ±5.6-10.1 % beside a busy loop. So ``time_rounds(..., precision_pct=5)`` (``bench --compare`` and the
search's head-to-head) goes on, half as many rounds again at a time, until every ratio against the first
subject and against the fastest is known to ±5 %, or four times the rounds asked have run; the rounds
run and why they stopped are recorded with the figures. (Stopping on the interval's width, not on the
ratio, leaves the ratio unbiased.)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..progress import progress_bar
from .machine import cpu_facts, isa_class

ROUND_QUANTILE = 25.0  # each round's figure: its lower quartile (see the module's docstring)
PER_ROUND = {"min": 0.0, "q25": ROUND_QUANTILE, "median": 50.0}  # the figures benchmarks/latency_noise.py compares
BOOTSTRAP = 2000
NOISY_HALFWIDTH_PCT = 10.0  # a ratio known no better than ±10 % is called noisy in words


def round_figures(times: np.ndarray, figure: str = "q25") -> np.ndarray:
    """``times`` (..., rounds, iters) in ms -> one figure per round (..., rounds): a percentile of the
    round's runs (``min``, ``q25``, ``median``) or their ``mean``."""
    times = np.asarray(times, float)
    if figure == "mean":
        return times.mean(axis=-1)
    return np.percentile(times, PER_ROUND[figure], axis=-1)


def estimate(times: np.ndarray, figure: str = "q25") -> float:
    """One subject's latency (ms) from its ``(rounds, iters)`` timings: the median over rounds of each
    round's figure (the lower quartile by default)."""
    return float(np.median(round_figures(times, figure)))


@dataclass(frozen=True)
class Ratio:
    """``a`` / ``b`` timed in the same rounds: the median of the per-round ratios and its paired
    bootstrap 95 % interval. ``verdict``: ``faster`` (interval below 1), ``slower`` (above) or ``tied``."""

    a: str
    b: str
    ratio: float
    ci95: tuple[float, float]
    rounds: int

    @property
    def halfwidth_pct(self) -> float:
        return 100.0 * (self.ci95[1] - self.ci95[0]) / 2.0 / self.ratio

    @property
    def verdict(self) -> str:
        lo, hi = self.ci95
        return "faster" if hi < 1.0 else "slower" if lo > 1.0 else "tied"

    @property
    def noisy(self) -> bool:
        return self.halfwidth_pct > NOISY_HALFWIDTH_PCT

    def text(self) -> str:
        lo, hi = self.ci95
        head = f"{self.a} / {self.b} = {self.ratio:.3f}x [{lo:.3f}, {hi:.3f}] over {self.rounds} rounds"
        if self.verdict == "tied":
            words = (f"undecided: the interval spans 1.0, so these rounds cannot tell {self.a} and {self.b} apart "
                     "(call them tied; more rounds or a quieter machine may decide)")
        else:
            words = f"{self.a} is {self.verdict} than {self.b}"
        if self.noisy:
            words += (f"; noisy: known only to ±{self.halfwidth_pct:.0f} % (the machine was busy while timing; "
                      "re-run with more --rounds or on a quieter machine before trusting the figure)")
        return f"{head}: {words}"

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "ratio": self.ratio, "ci95": list(self.ci95), "rounds": self.rounds,
                "halfwidth_pct": self.halfwidth_pct, "verdict": self.verdict, "noisy": self.noisy,
                "text": self.text()}


def paired_ratio(a: np.ndarray, b: np.ndarray, labels: tuple[str, str] = ("a", "b"), figure: str = "q25",
                 n_boot: int = BOOTSTRAP, seed: int = 0) -> Ratio:
    """The paired ratio of two subjects' ``(rounds, iters)`` timings (same rounds, same order of rounds)."""
    fa, fb = round_figures(a, figure), round_figures(b, figure)
    if fa.shape != fb.shape or fa.ndim != 1 or not len(fa):
        raise ValueError(f"need timings of the same rounds, got {np.shape(a)} and {np.shape(b)}")
    logr = np.log(fa) - np.log(fb)
    point = float(np.exp(np.median(logr)))
    if len(logr) == 1:
        return Ratio(*labels, point, (point, point), 1)
    idx = np.random.default_rng(seed).integers(0, len(logr), size=(n_boot, len(logr)))
    lo, hi = np.exp(np.percentile(np.median(logr[idx], axis=1), [2.5, 97.5]))
    return Ratio(*labels, point, (float(min(lo, point)), float(max(hi, point))), len(logr))


@dataclass
class RoundTimes:
    """Timings of several subjects in the same rounds: ``times[i]`` is subject ``i``'s (rounds, iters) in
    ms; ``orders`` the order each round ran them in; ``context`` the threads, affinity and load."""

    labels: list[str]
    times: np.ndarray
    orders: list[list[int]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def estimates(self, figure: str = "q25") -> list[float]:
        return [estimate(t, figure) for t in self.times]

    def ratio(self, i: int, j: int, figure: str = "q25") -> Ratio:
        return paired_ratio(self.times[i], self.times[j], (self.labels[i], self.labels[j]), figure)

    def ratios_vs(self, j: int = 0, figure: str = "q25") -> list[Ratio]:
        return [self.ratio(i, j, figure) for i in range(len(self.labels))]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "times_ms": np.round(self.times, 4).tolist(), "orders": self.orders,
                "context": self.context}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundTimes:
        return cls(list(d["labels"]), np.asarray(d["times_ms"], float), d.get("orders", []), d.get("context", {}))


def timing_context(threads: int | None = None) -> dict[str, Any]:
    """What a speed figure is measured under: threads, the cores this process may run on, the load
    average (other processes), and the CPU with its instruction sets and their class."""
    cpu = cpu_facts()
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"threads": threads, "affinity": affinity, "loadavg": load, "cpu": cpu["cpu"], "cores": cpu["cores"],
            "isa": cpu["isa"], "isa_class": isa_class(cpu["isa"])}


def time_rounds(fns: Sequence[Callable[[], Any]], labels: Sequence[str], rounds: int = 20, iters: int = 10,
                warmup: int = 10, round_warmup: int = 1, seed: int = 0, threads: int | None = None,
                label: str = "timing rounds", precision_pct: float | None = None,
                max_rounds: int | None = None) -> RoundTimes:
    """Time ``fns`` in ``rounds`` short rounds, each in a fresh random order (seeded): ``warmup`` untimed
    calls of each before the first round, then per round and subject ``round_warmup`` untimed calls (its
    caches, after the others ran) and ``iters`` timed ones.

    With ``precision_pct`` the rounds go on, half as many again at a time, until every subject's paired
    ratio against the first and against the fastest is known to ±``precision_pct`` (the half-width of
    its 95 % interval), or ``max_rounds`` (default four times ``rounds``) have run: a busy machine is
    timed longer instead of answered vaguely. ``context`` records the rounds planned and run and why
    they stopped."""
    if rounds < 1 or iters < 1:
        raise ValueError(f"need at least one round and one run, got rounds={rounds}, iters={iters}")
    n, rng = len(fns), np.random.default_rng(seed)
    cap = max(rounds, max_rounds or 4 * rounds) if precision_pct else rounds
    times, orders = np.zeros((n, cap, iters)), []
    ctx = timing_context(threads)
    for fn in fns:
        for _ in range(warmup):
            fn()
    done, upto, stopped = 0, rounds, "rounds asked"
    while True:
        with progress_bar(label if not done else f"{label}: more rounds for ±{precision_pct:g} %",
                          total=(upto - done) * n, unit="subject") as advance:
            for k in range(done, upto):
                orders.append([int(i) for i in rng.permutation(n)])
                for i in orders[-1]:
                    times[i, k] = _timed(fns[i], round_warmup, iters)
                    advance(1)
        done = upto
        if not precision_pct or n < 2:
            break
        if widest_halfwidth(times[:, :done]) <= precision_pct:
            stopped = f"every ratio known to ±{precision_pct:g} %"
            break
        if done >= cap:
            stopped = f"max rounds ({cap}) reached before ±{precision_pct:g} %"
            break
        upto = min(cap, done + max(10, rounds // 2))
    ctx.update(loadavg_after=timing_context()["loadavg"], rounds_planned=rounds, rounds_run=done,
               precision_pct=precision_pct, max_rounds=cap, stopped=stopped)
    return RoundTimes(list(labels), times[:, :done], orders, ctx)


def widest_halfwidth(times: np.ndarray, figure: str = "q25") -> float:
    """The widest half-width (%) among the paired ratios of every subject against the first and against
    the fastest (by estimate), for ``times`` (subjects, rounds, iters)."""
    fastest = int(np.argmin([estimate(t, figure) for t in times]))
    refs = {0, fastest}
    return max(paired_ratio(times[i], times[j], figure=figure).halfwidth_pct
               for j in refs for i in range(len(times)) if i != j)


def _timed(fn: Callable[[], Any], warmup: int, iters: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for j in range(iters):
        t0 = time.perf_counter()
        fn()
        out[j] = time.perf_counter() - t0
    return out * 1e3


@dataclass(frozen=True)
class Choice:
    """The tie rule's answer: ``fastest`` by estimate, ``tied`` (the subjects whose paired ratio against
    the fastest spans 1.0, the fastest included), and the ``winner``: among the tied, the smallest
    drop (then the fastest). Indices into the subjects."""

    winner: int
    fastest: int
    tied: list[int]
    estimates: list[float]
    ratios: list[Ratio]
    why: str

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"winner": labels[self.winner], "fastest": labels[self.fastest], "tied": [labels[i] for i in self.tied],
                "estimates_ms": self.estimates, "ratios_vs_fastest": [r.to_dict() for r in self.ratios],
                "why": self.why}


def choose(rt: RoundTimes, drops: Sequence[float | None] | None = None) -> Choice:
    """Pick among subjects timed head to head: the fastest, unless others are tied with it on speed
    (their ratio's interval spans 1.0), in which case the smallest ``drops`` among the tied wins."""
    est = rt.estimates()
    fastest = int(np.argmin(est))
    ratios = rt.ratios_vs(fastest)
    tied = [i for i, r in enumerate(ratios) if i == fastest or r.verdict == "tied"]
    drops = list(drops) if drops is not None else [None] * len(est)

    def rank(i: int) -> tuple[float, float]:
        return (drops[i] if drops[i] is not None else float("inf"), est[i])

    winner = min(tied, key=rank) if any(drops[i] is not None for i in tied) else fastest
    if len(tied) == 1:
        why = f"{rt.labels[fastest]} is faster than every other candidate (each interval is above 1.0)"
    else:
        names = ", ".join(f"{rt.labels[i]} {ratios[i].ratio:.2f}x [{ratios[i].ci95[0]:.2f}, {ratios[i].ci95[1]:.2f}]"
                          for i in tied if i != fastest)
        why = (f"tied on speed with the fastest ({rt.labels[fastest]}): {names}; "
               + (f"{rt.labels[winner]} wins on accuracy (drop {drops[winner]:+.2f} pts)"
                  if winner != fastest else f"{rt.labels[winner]} has the smallest drop among them or none is known"))
    return Choice(winner, fastest, tied, est, ratios, why)
