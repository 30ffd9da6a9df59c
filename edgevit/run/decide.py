"""The speed decision of `edgevit optimize`, made with intervals instead of point figures.

The search's timing rounds (every candidate, a few rounds, each artifact loaded and timed in a block of
runs) screen the candidates; on a shared CPU two artifacts a few per cent apart swap places from one
run to the next, and a block's figure moves with what ran just before it (measured: keep-0.4 EViT
int8 timed 1.2-2.0x keep-0.5's in every one of three rounds, while head to head in a fresh process it
was 0.91x). So each runtime's fastest candidates by the rounds (``SCREEN_TOP``) are re-timed head to
head, all loaded at once, in many short rounds in random order (:func:`screen`), and that ordering ranks
them (:func:`edgevit.run.search.speed`). Then, before a runtime's winner is chosen, its front (the
fastest candidate within budget, and every other candidate within budget whose paired interval against
it in the screen (or, outside it, the search's rounds) reaches down to 1.0, at most ``MAX_CONTENDERS``)
is re-timed head to head in many short rounds (:func:`edgevit.eval.timing.time_rounds`), and
:func:`edgevit.eval.timing.choose` applies the tie rule: the fastest wins unless others are tied with it
on speed (their paired ratio's interval spans 1.0); among the tied, the smallest top-1 drop wins.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..eval.stats import Paired
from ..eval.timing import Ratio, RoundTimes, choose, paired_ratio
from ..progress import say
from .artifacts import bench_artifacts_timed
from .search import Candidate, slug, speed

INT8_SLACK_PTS = 1.0  # int8 candidates are scored only when their float twin is this close to the budget
MAX_CONTENDERS = 6  # the fastest and at most five others are re-timed head to head
H2H_ROUNDS, H2H_ITERS = 120, 1  # short rounds: one run of each, in a random order, 120 times
H2H_PRECISION_PCT = 5.0  # then more rounds (up to 4x) until every ratio is known to ±5 %
SCREEN_TOP = 8  # each runtime's 8 fastest candidates by the search's rounds are re-timed head to head


def latency_path(s, c: Candidate):
    """The artifact the search times for ``c`` (exported for the latency model)."""
    return s.opts.out / "latency" / slug(c.latency_prune) / "artifacts" / c.target


def head_to_head(s, cands: list[Candidate], keys: list[str]) -> tuple[list[dict[str, Any]], RoundTimes]:
    """The candidates' latency artifacts timed together in short rounds (``H2H_ROUNDS`` one-run rounds,
    random order, more until ±``H2H_PRECISION_PCT``): the rows, and the rounds labelled with ``keys``."""
    rows, rt = bench_artifacts_timed([latency_path(s, c) for c in cands], reference=False, warmup=10,
                                     iters=H2H_ITERS, rounds=H2H_ROUNDS, precision_pct=H2H_PRECISION_PCT,
                                     threads=s.opts.threads)
    rt.labels = keys
    return rows, rt


def screen(s, fam: str, lat: dict[str, dict[str, Any]]) -> None:
    """Re-time the runtime's ``SCREEN_TOP`` fastest candidates by the search's rounds head to head (logged,
    so a resumed search reuses it) and put each one's figure there (``h2h_ms``) and its paired ratio
    against the fastest of them (``h2h_vs_fastest``) into ``lat``: :func:`edgevit.run.search.speed` ranks
    these candidates by it, ahead of the rest."""
    top = sorted((c for c in s.cands if c.family == fam and c.key in lat), key=lambda c: speed(lat[c.key]))[:SCREEN_TOP]
    keys = [c.key for c in top]
    if len(keys) < 2:
        return
    rec = s.log.get("latency-screen", fam)
    if rec is None or rec["keys"] != keys:
        say("latency: ", plain=f"{fam}: its {len(keys)} fastest candidates re-timed head to head ({H2H_ROUNDS} short "
            f"rounds, more until ±{H2H_PRECISION_PCT:g} %)")
        _, rt = head_to_head(s, top, keys)
        rec = s.log.put("latency-screen", fam, keys=keys, rounds=rt.to_dict())
    rt = RoundTimes.from_dict(rec["rounds"])
    est = rt.estimates()
    fastest = int(np.argmin(est))
    for i, k in enumerate(keys):
        lat[k].update(h2h_ms=est[i], h2h_vs_fastest=rt.ratio(i, fastest).to_dict())


def screening_ratio(s, key: str, ref: str) -> Ratio | None:
    """``key`` / ``ref`` from the head-to-head screen when both were in it, else from the search's own
    timing rounds (each round's robust figure, paired by round)."""
    for rec in s.log.of_kind("latency-screen"):
        if key in rec["keys"] and ref in rec["keys"]:
            return RoundTimes.from_dict(rec["rounds"]).ratio(rec["keys"].index(key), rec["keys"].index(ref))
    rounds = [r["rows"] for r in s.log.of_kind("latency-round") if key in r["rows"] and ref in r["rows"]]
    if not rounds:
        return None
    fig = [[r[k].get("estimate_ms", r[k]["p50_ms"])] for k in (key, ref) for r in rounds]
    a, b = np.asarray(fig[:len(rounds)]), np.asarray(fig[len(rounds):])
    return paired_ratio(a, b, (key, ref), figure="min")


def tags(s, prune: str | None) -> list[str]:
    """The weights a transform has been scored or could be scored with: ``base``, then each fine-tune."""
    done = sorted(r["epochs"] for r in s.log.of_kind("finetune") if r["prune"] == prune) if prune else []
    return ["base"] + [f"ft{e}" for e in done]


def escalate(s, c: Candidate, tag: str, p: Paired) -> Paired:
    """An int8 candidate that misses while its float twin meets the budget: keep its most sensitive
    layers float (``max_drop``), then QAT, while it misses by at most a point."""
    twin = s.float_twin(c, tag)
    tries = [{"max_drop": s.opts.max_drop}] + ([{"qat_epochs": s.opts.qat_epochs}] if s.opts.qat_epochs else [])
    for extra in tries:
        if not s.meets(twin) or p.budget_value(s.opts.strict) > s.opts.max_drop + 1.0 or s.left() <= 0:
            break
        p = s.accuracy(c, tag, extra)
        if s.meets(p):
            break
    return p


def first_meeting(s, c: Candidate) -> tuple[str, Paired] | None:
    """The candidate's weights (latest fine-tune first) whose accuracy meets the budget, scoring them as
    the search does: int8 only while time is left and its float twin is close to the budget, with the
    float-fallback and QAT escalation for near misses."""
    for tag in reversed(tags(s, c.prune)):
        if c.int8 and s.left() <= 0 and not s.has_accuracy(c, tag):
            continue  # float candidates take one PyTorch pass and are always scored; int8 ones need an export
        if c.int8 and not s.has_accuracy(c, tag) and s.float_twin(c, tag).budget_value(s.opts.strict) > \
                s.opts.max_drop + INT8_SLACK_PTS:
            continue  # its float twin misses by more than int8 noise: quantization will not win that back
        p = s.accuracy(c, tag)
        if not s.meets(p) and c.int8:
            p = escalate(s, c, tag, p)
        if s.meets(p):
            return tag, p
    return None


def contenders(s, fam: str, lat: dict[str, dict[str, Any]], best) -> list[tuple[Candidate, str, Paired, Any]]:
    """The winner so far and the candidates within budget that the search's rounds cannot call slower."""
    c0, tag0, p0 = best
    out = [(c0, tag0, p0, None)]
    slower = sorted((c for c in s.cands if c.family == fam and c.key in lat and c.key != c0.key
                     and speed(lat[c.key]) >= speed(lat[c0.key])), key=lambda c: speed(lat[c.key]))
    for c in slower:
        if len(out) >= MAX_CONTENDERS:
            break
        r = screening_ratio(s, c.key, c0.key)
        if r is None or r.ci95[0] > 1.0:
            continue  # clearly slower in the search's rounds
        hit = first_meeting(s, c)
        if hit is not None:
            out.append((c, *hit, r))
    return out


def decide(s, fam: str, lat: dict[str, dict[str, Any]], best):
    """The runtime's winner after the head-to-head and the tie rule, and the decision's record."""
    if best is None:
        return None, None
    front = contenders(s, fam, lat, best)
    keys = [f"{c.key}#{tag}" for c, tag, _, _ in front]
    rec = s.log.get("decision", fam)
    if rec is None or rec["contenders"] != keys:
        rec = s.log.put("decision", fam, **_timed_decision(s, front, keys))
    win = front[keys.index(rec["winner_key"])]
    return win[:3], rec


def _timed_decision(s, front, keys: list[str]) -> dict[str, Any]:
    drops = [p.drop_pts for _, _, p, _ in front]
    screen = [r.to_dict() if r is not None else None for *_, r in front]
    if len(front) == 1:
        return {"contenders": keys, "winner_key": keys[0], "drops": drops, "screening": screen,
                "why": "no other candidate within budget is as fast in the search's rounds (each one's interval "
                       "against it is above 1.0, or it misses the budget)"}
    say("decision: ", plain=f"{front[0][0].family}: {len(front)} candidates within budget overlap the fastest; "
        f"re-timing them head to head ({H2H_ROUNDS} short rounds, more until ±{H2H_PRECISION_PCT:g} %)")
    rows, rt = head_to_head(s, [c for c, *_ in front], keys)
    ch = choose(rt, drops)
    return {"contenders": keys, "winner_key": keys[ch.winner], "drops": drops, "screening": screen,
            **ch.to_dict(keys), "p50_ms": [r["p50_ms"] for r in rows], "context": rt.context}
