"""What `edgevit optimize` searches and how it remembers: the candidates (token reduction × the
float and int8 targets of each runtime family, as the targets declare them:
:func:`edgevit.targets.base.families`), the Pareto front, and the append-only log a killed search
resumes from, the search's options, and the median of timing rounds. The orchestration is in
:mod:`edgevit.run.optimize`."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeVitError, OptionError
from ..models import ModelSpec
from ..targets import TARGETS, get_target
from ..targets.registry import families as target_families
from ..transforms import TRANSFORMS
from ..transforms import parse as parse_transforms


class SearchError(EdgeVitError):
    """The search cannot start (bad space, a log from another search) or nothing met the budget."""

    exit_code = 1


def float_target(family: str) -> str:
    """The float target of a runtime family (the dense float twin its int8 candidates are compared with)."""
    return target_families()[family][0]


def search_options(target: str) -> dict[str, Any]:
    """The options `edgevit optimize` exports ``target`` with (its ``search_options``)."""
    return dict(get_target(target).search_options)


def family_of(name: str) -> str:
    """``--target`` name -> the runtime family searched (``openvino-int8`` searches ``openvino``)."""
    fams = target_families()
    fam = next((f for f, members in fams.items() if name == f or name in members), None)
    if fam is not None:
        return fam
    where = TARGETS[name].timed_elsewhere if name in TARGETS else None
    if where:
        raise OptionError(f"optimize measures latency on the machine it runs on, and {where}",
                          f"run the search for {name} on that machine, or search --target {' / '.join(fams)} here")
    raise OptionError(f"optimize cannot search --target {name}", f"use one of {', '.join(fams)}")


@dataclass(frozen=True)
class Candidate:
    prune: str | None  # transforms on the accuracy model (None: dense)
    target: str  # an export target
    family: str  # the runtime it answers for
    latency_prune: str | None  # the same transforms on the latency model (each scaled to its tokens)

    @property
    def key(self) -> str:
        return f"{self.prune or 'dense'}|{self.target}"

    @property
    def int8(self) -> bool:
        return get_target(self.target).int8


def slug(text: str | None) -> str:
    """A folder name for a transform text: ``evit:0.5@2,5,8+tome:2`` -> ``evit0.5-2.5.8+tome2``."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "", (text or "dense").replace("@", "-").replace(",", "."))


def default_space(depth: int, n_tokens: int) -> list[str | None]:
    """The transforms searched by default for a ViT of ``depth`` blocks and ``n_tokens`` patch tokens:
    dense, every registered transform's own entries (its ``search_space``: EViT keep 0.7 / 0.5 / 0.4 at
    three sets of locations, ToMe merging about 4 % and 6.5 % of the tokens per block), then each
    entry a transform offers to lead (``search_lead``) with every other transform following at the
    share it asks (``search_follow``): EViT 0.7 with two thirds and EViT 0.5 with a third of the smaller
    ToMe r (fewer merges, since EViT has already cut the tokens). Transforms that do not fit a given
    model (too few tokens left to merge) are left out by the search, which says so."""
    kinds = [c for c in TRANSFORMS.values() if hasattr(c, "search_space")]
    alone = [entry for c in kinds for entry in c.search_space(depth, n_tokens)]
    composed = []
    for lead in kinds:
        for text, share in getattr(lead, "search_lead", lambda *_: [])(depth, n_tokens):
            follows = [c.search_follow(depth, n_tokens, share) for c in kinds
                       if c is not lead and hasattr(c, "search_follow")]
            composed += [f"{text}+{f}" for f in follows if f]
    return [None, *alone, *composed]


def scale_prune(text: str | None, n_from: int, n_to: int) -> str | None:
    """The same transforms for a model with ``n_to`` patch tokens, each as it scales (its ``scaled``:
    ToMe's r, tokens merged per block, scales with the token count; EViT's keep rate and locations
    hold); a part that does not change keeps its text."""
    if not text or n_from == n_to:
        return text
    parts = []
    for part, t in zip(text.split("+"), parse_transforms(text)):
        s = t.scaled(n_from, n_to) if hasattr(t, "scaled") else t
        parts.append(part if s == t else str(s))
    return "+".join(parts)


def candidates(space: list[str | None], families: list[str], n_acc: int, n_lat: int) -> list[Candidate]:
    return [Candidate(p, t, fam, scale_prune(p, n_acc, n_lat)) for p in space for fam in families
            for t in target_families()[fam]]


def pareto(points: list[tuple[float, float, Any]]) -> list[Any]:
    """The (latency, drop, item) points no other point beats on both (lower is better for both),
    fastest first."""
    front, best = [], float("inf")
    for _lat, drop, item in sorted(points, key=lambda p: (p[0], p[1])):
        if drop < best:
            front.append(item)
            best = drop
    return front


class SearchLog:
    """Append-only JSON lines: one record per finished step, written and flushed before the next
    step starts. A search killed at any point resumes from it; a torn last line is ignored."""

    def __init__(self, path: Path, config: dict[str, Any], resume: bool):
        self.path = Path(path)
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        if self.path.exists() and resume:
            self._load(config)
        elif self.path.exists():
            raise SearchError(f"{self.path.parent} already holds a search",
                              "pass --resume to continue it, or another --out for a new one")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.put("config", "search", **config)

    def _load(self, config: dict[str, Any]) -> None:
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # the step being written when the search was killed
                    continue
                raise SearchError(f"{self.path} line {i + 1} is not JSON",
                                  "the log was edited: remove the bad line or start a new search (--out)") from None
            self.records[(rec["kind"], rec["key"])] = rec
        old = self.records.get(("config", "search"), {})
        diff = sorted(k for k in config if json.dumps(old.get(k)) != json.dumps(config[k]))
        if diff:
            raise SearchError(f"the search in {self.path.parent} was started with other settings "
                              f"({', '.join(diff)} differ)", "resume it with the same settings, or pass another --out")
        with open(self.path, "rb+") as f:  # drop a torn last line before appending
            good = b"".join(ln + b"\n" for ln in f.read().splitlines() if _parses(ln))
            f.seek(0)
            f.write(good)
            f.truncate()

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.records.get((kind, key))

    def put(self, kind: str, key: str, **data: Any) -> dict[str, Any]:
        rec = {"kind": kind, "key": key, **data}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[(kind, key)] = rec
        return rec

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for (k, _), r in self.records.items() if k == kind]


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


@dataclass
class OptimizeOptions:
    targets: list[str]  # runtimes: openvino, onnx (their int8 targets are searched with them)
    data: str  # labelled images: fine-tune (train part), calibration (train part), accuracy (split)
    out: Path
    max_drop: float = 1.0  # top-1 points below the dense float model
    strict: bool = False  # hold the 95 % interval's upper bound to the budget, not the point estimate
    time_budget_min: float | None = None  # the whole search, resumed parts included
    space: list[str | None] | None = None  # transforms to try (None: the default space)
    finetune_epochs: int = 2
    finetune_lr: float = 2e-4
    max_finetunes: int = 6
    recoverable_pts: float = 8.0  # untuned misses beyond the budget by more than this are not fine-tuned
    longer_finetune_pts: float = 2.0  # a fine-tuned miss within this gets one fine-tune twice as long (0: never)
    qat_epochs: int = 1  # int8 candidates that miss by a little: QAT after the float-fallback try (0: never)
    # The images the search chooses on: held out from the dense model's training as well as from the
    # fine-tunes and calibration (both use the train split): val (a source's own val or test split,
    # or the val_fraction carve). "holdout" sets aside a fraction of the training images instead,
    # for a dense model that never trained on them; then confirm_split can validate on untouched images.
    split: str = "val"
    holdout: float | None = None
    confirm_split: str | None = None  # the winners are also validated here, never used to choose
    val_fraction: float = 0.2
    seed: int = 0
    calib_size: int = 128
    latency_model: ModelSpec | None = None  # time this model instead (e.g. the deployment resolution)
    rounds: int = 3
    iters: int = 50
    warmup: int = 10
    threads: int | None = None
    resume: bool = False
    export_winners: bool = True
    families: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    def check(self) -> None:
        self.families = list(dict.fromkeys(family_of(t) for t in self.targets))
        if not self.families:
            raise OptionError("no --target given", f"pass e.g. --target {','.join(target_families())}")
        for flag, value, low in (("--max-drop", self.max_drop, 0.0), ("--finetune-epochs", self.finetune_epochs, 0),
                                 ("--rounds", self.rounds, 1), ("--iters", self.iters, 1),
                                 ("--calib-size", self.calib_size, 1), ("--max-finetunes", self.max_finetunes, 0)):
            if value < low:
                raise OptionError(f"{flag} must be at least {low}, got {value}", f"pass {flag} {low} or more")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise OptionError(f"--time-budget must be positive, got {self.time_budget_min}",
                              "pass minutes, e.g. --time-budget 60, or leave it out")
        if self.confirm_split in (self.split, "holdout"):
            raise OptionError(f"--confirm-split {self.confirm_split} is the split the search chooses on",
                              "confirm on another split (e.g. test), or leave it out")
        if self.split == "holdout" and not (self.holdout and 0.0 < self.holdout < 1.0):
            raise OptionError(f"--split holdout needs --holdout in (0, 1), got {self.holdout}",
                              "pass --holdout 0.2, or choose on another split (--split val)")

    @property
    def report_split(self) -> str:
        """Where the winners are validated: the confirm split, else the split chosen on (test when
        choosing on the holdout)."""
        return self.confirm_split or ("test" if self.split == "holdout" else self.split)


def median_of_rounds(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per candidate: the median over rounds of each round's p50, p90 and robust figure (``estimate_ms``:
    the round's lower quartile, see :mod:`edgevit.eval.timing`), the rounds' p50s and their spread
    (100 × (max − min) / median), so every latency carries its own noise."""
    out = {}
    for key in rounds[0]:
        p50s = [r[key]["p50_ms"] for r in rounds if key in r]
        med = float(np.median(p50s))
        est = [r[key].get("estimate_ms", r[key]["p50_ms"]) for r in rounds if key in r]
        out[key] = {"p50_ms": med, "p90_ms": float(np.median([r[key]["p90_ms"] for r in rounds if key in r])),
                    "estimate_ms": float(np.median(est)), "estimate_ms_per_round": est,
                    "p50_ms_per_round": p50s, "round_spread_pct": 100.0 * (max(p50s) - min(p50s)) / med,
                    "runtime_precision": rounds[0][key].get("runtime_precision")}
    return out


def speed(lat: dict[str, Any]) -> tuple[int, float]:
    """What candidates are ranked by (lower is faster): those re-timed head to head
    (:func:`edgevit.run.decide.screen`) first, by that figure; then the rest by the search's rounds'
    robust estimate (a search logged before it: the p50). The two figures are not on one scale (a
    block of runs is faster than single interleaved runs), so they are never compared with each other."""
    if "h2h_ms" in lat:
        return 0, lat["h2h_ms"]
    return 1, lat.get("estimate_ms", lat["p50_ms"])
