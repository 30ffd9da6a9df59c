"""`edgevit optimize`: the fastest artifact for a runtime within an accuracy budget, found by search.

Latency first: latency does not depend on weight values, so every candidate (token reduction ×
the float and int8 targets of each runtime) is exported and timed on this machine in rounds
before any accuracy is spent, and each runtime's fastest few are re-timed head to head (short
interleaved rounds, all loaded at once), which ranks them. Then, fastest first, each candidate's
accuracy is compared with the dense float model on a held-out split (disjoint from the calibration
and fine-tune images, paired statistics); the first within budget is the runtime's best, and only transforms with a
candidate faster than the best so far get a short fine-tune (distilled from the dense model).
Every finished step is appended to ``search.jsonl``; a killed search resumes from it (``--resume``).
The time budget bounds exports, timing rounds beyond the first, int8 scoring and fine-tunes; the
dense model is always timed and every float candidate timed is scored (one PyTorch pass each), so
a spent budget still ends with an answer: the best found so far.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import transforms
from ..data import data_config, eval_transform, load_split, make_loader
from ..eval.machine import cpu_facts
from ..eval.stats import Paired, pack, paired, unpack
from ..eval.validate import compare, torch_predict
from ..models import ModelSpec
from ..progress import duration, say
from ..transforms.base import TransformError
from ..transforms.tokens import patch_tokens
from .artifacts import bench_artifacts, load_artifact
from .decide import decide, first_meeting, screen
from .export import ExportOptions, run_export
from .search import (
    Candidate,
    OptimizeOptions,
    SearchLog,
    candidates,
    default_space,
    float_target,
    median_of_rounds,
    scale_prune,
    search_options,
    slug,
    speed,
)
from .training import finetune_transformed, trained_spec


class Search:
    """One search's state: the models, the held-out images, the log and the clock."""

    def __init__(self, spec: ModelSpec, opts: OptimizeOptions):
        self.spec, self.opts = spec, opts
        self.dense, self.spec_rec, _ = transforms.build_model(dataclasses.replace(spec, prune=None))
        self.dense.eval()
        self.data_cfg = data_config(self.dense, spec.img_size)
        self.lat_spec = opts.latency_model or dataclasses.replace(spec, prune=None)
        lat_model, _, _ = transforms.build_model(dataclasses.replace(self.lat_spec, prune=None))
        self.n_acc, self.n_lat = patch_tokens(self.dense), patch_tokens(lat_model)
        depth = len(self.dense.blocks)
        self.space = list(opts.space) if opts.space is not None else default_space(depth, self.n_acc)
        if None not in self.space:
            self.space.insert(0, None)  # the dense model is always a candidate (and the baseline)
        self.space = [p for p in self.space if self._applies(p, opts.space is None)]
        self.cands = candidates(self.space, opts.families, self.n_acc, self.n_lat)
        self.log = SearchLog(opts.out / "search.jsonl", self.config(), opts.resume)
        self.started = time.monotonic()
        self.spent_before = sum(r.get("seconds", 0.0) for r in self.log.records.values())
        ds = load_split(opts.data, opts.split, eval_transform(self.data_cfg), opts.val_fraction, opts.seed,
                        holdout=opts.holdout)
        self.images = ds
        self.dense_correct = self._correct(torch_predict(self.dense), "dense model")

    def _applies(self, prune: str | None, default: bool) -> bool:
        """Every transform must apply to both models before any work: one of the user's that does not
        is an error; one of the default space's (e.g. ToMe after EViT on a model with few tokens) is
        left out, and said so."""
        if not prune:
            return True
        try:
            for base, text in ((self.spec, prune), (self.lat_spec, scale_prune(prune, self.n_acc, self.n_lat))):
                transforms.build_model(dataclasses.replace(base, prune=text, checkpoint=None, pretrained=False))
        except TransformError as e:
            if not default:
                raise
            say("[yellow]space:[/] ", plain=f"{prune} left out ({e.what})")
            return False
        return True

    def config(self) -> dict[str, Any]:
        o = self.opts
        return {"model": self.spec_rec.to_dict(), "latency_model": self.lat_spec.to_dict(), "data": str(o.data),
                "split": o.split, "holdout": o.holdout, "val_fraction": o.val_fraction, "seed": o.seed,
                "space": self.space,
                "families": o.families, "max_drop": o.max_drop, "strict": o.strict,
                "finetune_epochs": o.finetune_epochs, "finetune_lr": o.finetune_lr, "calib_size": o.calib_size,
                "longer_finetune_pts": o.longer_finetune_pts,
                "rounds": o.rounds, "iters": o.iters}

    # --- the clock -------------------------------------------------------------------------
    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def left(self) -> float:
        budget = self.opts.time_budget_min
        return float("inf") if budget is None else budget * 60.0 - self.spent()

    # --- accuracy --------------------------------------------------------------------------
    def _correct(self, predict, label: str) -> np.ndarray:
        res = self.compare_on({"m": predict}, self.images, label)["m"]
        return res["logits"].argmax(1) == res["labels"]

    def compare_on(self, predictors: dict[str, Any], ds, label: str = "validating") -> dict[str, dict[str, Any]]:
        return compare(predictors, make_loader(ds, 64), total=len(ds), label=label)

    def weights(self, prune: str | None, tag: str) -> ModelSpec:
        """The spec of ``prune`` with the weights ``tag`` names: ``base`` (the checkpoint as given) or
        ``ftN`` (fine-tuned N epochs)."""
        spec = dataclasses.replace(self.spec, prune=prune)
        if tag == "base":
            return spec
        rec = self.log.get("finetune", f"{prune}#{tag[2:]}")
        return trained_spec(spec, Path(rec["weights"]))

    def accuracy(self, cand: Candidate, tag: str, extra: dict[str, Any] | None = None) -> Paired:
        """The candidate's paired comparison with the dense float model on the held-out split (logged)."""
        extra = extra or {}
        key = f"{cand.key}#{tag}" + "".join(f"+{k}" for k in sorted(extra))
        if cand.int8:
            rec = self.log.get("accuracy", key)
        else:  # float targets share the PyTorch model's predictions (export agreement is checked at export)
            rec = self.log.get("accuracy", f"{cand.prune or 'dense'}|float#{tag}")
            key = f"{cand.prune or 'dense'}|float#{tag}"
        if rec is None:
            t0 = time.monotonic()
            correct = self._int8_correct(cand, tag, extra) if cand.int8 else self._float_correct(cand.prune, tag)
            rec = self.log.put("accuracy", key, correct=pack(correct), n=len(correct),
                               seconds=time.monotonic() - t0)
        return paired(self.dense_correct, unpack(rec["correct"], rec["n"]))

    def _float_correct(self, prune: str | None, tag: str) -> np.ndarray:
        model, _, _ = transforms.build_model(self.weights(prune, tag))
        return self._correct(torch_predict(model.eval()), f"accuracy of {prune or 'dense'} ({tag})")

    def _int8_correct(self, cand: Candidate, tag: str, extra: dict[str, Any]) -> np.ndarray:
        o = self.opts
        out = o.out / "accuracy" / f"{slug(cand.prune)}-{tag}-{cand.target}{'-' + '-'.join(extra) if extra else ''}"
        options = {"calib_size": o.calib_size, **search_options(cand.target), **extra}
        run_export(self.weights(cand.prune, tag), ExportOptions(
            targets=[cand.target], out=out, data=o.data, split=o.report_split, val_fraction=o.val_fraction,
            seed=o.seed, holdout=o.holdout, exist_ok=True, validate=False, bench=False, options=options))
        _, runner, _, _ = load_artifact(out / "artifacts" / cand.target, o.threads)
        return self._correct(runner, f"accuracy of {cand.key} ({tag})")

    def has_accuracy(self, cand: Candidate, tag: str) -> bool:
        key = f"{cand.key}#{tag}" if cand.int8 else f"{cand.prune or 'dense'}|float#{tag}"
        return self.log.get("accuracy", key) is not None

    def float_twin(self, cand: Candidate, tag: str) -> Paired:
        """The float model (same transforms and weights) of an int8 candidate, scored."""
        return self.accuracy(Candidate(cand.prune, float_target(cand.family), cand.family, None), tag)

    def meets(self, p: Paired) -> bool:
        return p.budget_value(self.opts.strict) <= self.opts.max_drop

    # --- fine-tunes ------------------------------------------------------------------------
    def finetune(self, prune: str, epochs: int) -> None:
        """Fine-tune ``prune`` for ``epochs`` from the checkpoint, distilled from the dense model (a
        longer one starts from the checkpoint too, so one recipe line rebuilds it)."""
        if self.log.get("finetune", f"{prune}#{epochs}"):
            return
        o, t0 = self.opts, time.monotonic()
        out = o.out / "finetune" / f"{slug(prune)}-{epochs}ep"
        say("fine-tune: ", plain=f"{prune}, {epochs} epoch(s) distilled from the dense model")
        _, spec = finetune_transformed(dataclasses.replace(self.spec, prune=prune), o.data, out, epochs,
                                       o.finetune_lr, split=o.report_split, val_fraction=o.val_fraction, seed=o.seed,
                                       holdout=o.holdout)
        self.log.put("finetune", f"{prune}#{epochs}", prune=prune, weights=str(spec.checkpoint), epochs=epochs,
                     lr=o.finetune_lr, seconds=time.monotonic() - t0)

    def finetune_seconds(self, epochs: int) -> float:
        """About how long a fine-tune of ``epochs`` takes here (0 before the first one)."""
        done = self.log.of_kind("finetune")
        return max(r["seconds"] / r["epochs"] for r in done) * epochs if done else 0.0

    # --- latency ---------------------------------------------------------------------------
    def latencies(self) -> dict[str, dict[str, Any]]:
        """Export every candidate for the latency model and time them all in rounds (each artifact a block
        of runs), then re-time each runtime's fastest few head to head (:func:`edgevit.run.decide.screen`)."""
        groups = []
        for p in self.space:
            lat_p = next(c.latency_prune for c in self.cands if c.prune == p)
            if p is not None and self.left() <= 0 and not self.log.get("exported", slug(lat_p)):
                say("[yellow]time budget:[/] ", plain=f"spent; {p or 'dense'} and later transforms are not timed")
                break
            groups.append((p, self._latency_artifacts(p, lat_p)))
        done = []
        for r in range(self.opts.rounds):
            if self.log.get("latency-round", str(r)):
                done.append(r)
                continue
            if done and self.left() <= 0:
                break
            done.append(r)
            say("latency: ", plain=f"round {r + 1} of {self.opts.rounds} over {sum(len(g) for _, g in groups)} "
                "artifacts (each a block of runs, batch 1)")
            t0, rows = time.monotonic(), {}
            for _, arts in groups:
                timed = bench_artifacts([a for _, a in arts], reference=False, warmup=self.opts.warmup,
                                        iters=self.opts.iters, threads=self.opts.threads)
                for row, (cand, _) in zip(timed, arts):
                    rows[cand.key] = {k: row[k] for k in ("p50_ms", "p90_ms", "estimate_ms", "runtime_precision")
                                      if k in row}
            self.log.put("latency-round", str(r), rows=rows, seconds=time.monotonic() - t0)
        lat = median_of_rounds([self.log.get("latency-round", str(r))["rows"] for r in done])
        for fam in self.opts.families:  # the fastest few of each runtime re-timed head to head: they rank by it
            screen(self, fam, lat)
        return lat

    def _latency_artifacts(self, prune: str | None, lat_prune: str | None) -> list[tuple[Candidate, Path]]:
        out = self.opts.out / "latency" / slug(lat_prune)
        cands = [c for c in self.cands if c.prune == prune]
        targets = list(dict.fromkeys(c.target for c in cands))
        if not self.log.get("exported", slug(lat_prune)):
            t0 = time.monotonic()
            options = {"calib": self.opts.data, "calib_size": 8}
            options.update({k: v for t in targets for k, v in search_options(t).items()})
            with torch.random.fork_rng():  # one seeded set of weights (latency only): a run that can be repeated
                torch.manual_seed(self.opts.seed)
                run_export(dataclasses.replace(self.lat_spec, prune=lat_prune), ExportOptions(
                    targets=targets, out=out, exist_ok=True, bench=False, check_images=2, options=options))
            self.log.put("exported", slug(lat_prune), prune=lat_prune, seconds=time.monotonic() - t0)
        return [(c, out / "artifacts" / c.target) for c in cands]


def run_optimize(spec: ModelSpec, opts: OptimizeOptions) -> dict[str, Any]:
    """Search, write the outputs (candidates, front, plot, winner recipes, the winners exported and
    validated) and return the summary. Raises SearchError (after writing the outputs) when no
    candidate of some runtime meets the budget."""
    from .winner import finish  # the outputs

    opts.check()
    spec.check()
    s = Search(spec, opts)
    say("optimize: ", plain=f"{len(s.cands)} candidates ({len(s.space)} transforms x {', '.join(opts.families)}), "
        f"budget {opts.max_drop:g} pts ({'95 % upper bound' if opts.strict else 'point estimate'}), "
        f"{len(s.images)} held-out images ({opts.split}); {cpu_facts()['cpu']}")
    lat = s.latencies()
    best = walk_all(s, lat)
    decisions = {}
    for fam in opts.families:  # re-time each runtime's front head to head; ties go to accuracy
        best[fam], decisions[fam] = decide(s, fam, lat, best[fam])
    return finish(s, lat, best, decisions)


def walk_all(s: Search, lat: dict[str, dict[str, Any]]) -> dict[str, tuple[Candidate, str, Paired] | None]:
    """Fastest first per runtime; then fine-tune the transforms that could beat the best so far."""
    for p in s.space:  # untuned float accuracy of every transform: cheap, and the plot shows all of them
        s.accuracy(Candidate(p, float_target(s.opts.families[0]), s.opts.families[0], None), "base")
    best = {fam: walk(s, fam, lat, None) for fam in s.opts.families}
    while s.opts.finetune_epochs and len(s.log.of_kind("finetune")) < s.opts.max_finetunes:
        nxt = next_finetune(s, lat, best)
        if nxt is None:
            break
        need = s.finetune_seconds(nxt[1])
        if s.left() < need * 1.1 or s.left() <= 0:
            say("[yellow]time budget:[/] ", plain=f"{duration(max(0.0, s.left()))} left, a fine-tune takes about "
                f"{duration(need)}: {nxt[0]} is not fine-tuned for {nxt[1]} epochs")
            break
        s.finetune(*nxt)
        best = {fam: walk(s, fam, lat, best[fam]) for fam in s.opts.families}
    return best


def walk(s: Search, fam: str, lat: dict[str, dict[str, Any]], best):
    """The fastest candidate of ``fam`` within budget (by the search's rounds), trying only those faster
    than ``best``."""
    for c in sorted((c for c in s.cands if c.family == fam and c.key in lat), key=lambda c: speed(lat[c.key])):
        if best is not None and speed(lat[c.key]) >= speed(lat[best[0].key]):
            return best
        hit = first_meeting(s, c)
        if hit is not None:
            return (c, *hit)
    return best


def next_finetune(s: Search, lat: dict[str, dict[str, Any]], best) -> tuple[str, int] | None:
    """(transform, epochs) for the fastest candidate that beats its runtime's best so far: a short
    fine-tune when its untuned miss can plausibly be recovered, or one twice as long when the short
    one left it within ``longer_finetune_pts`` of the budget."""
    short, o = s.opts.finetune_epochs, s.opts
    for c in sorted((c for c in s.cands if c.prune and c.key in lat), key=lambda c: speed(lat[c.key])):
        b = best.get(c.family)
        if b is not None and speed(lat[c.key]) >= speed(lat[b[0].key]):
            continue
        twin = Candidate(c.prune, float_target(c.family), c.family, None)
        if not s.log.get("finetune", f"{c.prune}#{short}"):
            if s.accuracy(twin, "base").budget_value(o.strict) - o.max_drop <= o.recoverable_pts:
                return c.prune, short
            continue
        if (o.longer_finetune_pts > 0 and not s.log.get("finetune", f"{c.prune}#{2 * short}")
                and s.accuracy(twin, f"ft{short}").budget_value(o.strict) - o.max_drop <= o.longer_finetune_pts):
            return c.prune, 2 * short
    return None

