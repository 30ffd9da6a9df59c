"""`edgevit optimize` on a tiny model: latency first, fastest-first accuracy, the budget, the time
budget, resume after a kill, a budget nothing meets, and winner.yaml rebuilding the winner."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_spec, write_cifar

from edgevit.run import decide as D
from edgevit.run import optimize as O
from edgevit.run.recipe import load_recipe, run_recipe
from edgevit.run.search import Candidate, SearchError, SearchLog, candidates, default_space, pareto, scale_prune

SPACE = [None, "evit:0.5@1", "tome:2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from edgevit.models import create_model

    root = tmp_path_factory.mktemp("opt")
    data = write_cifar(root / "cifar", n_train=200, n_test=20)
    torch.manual_seed(0)
    spec = tiny_spec(extra={"depth": 3})
    path = root / "tiny.pth"
    torch.save(create_model(spec).state_dict(), path)
    return tiny_spec(extra={"depth": 3}, checkpoint=str(path)), str(data), root


def opts(setup, out, **kw):
    spec, data, root = setup
    base = dict(targets=["onnx"], data=data, out=root / out, max_drop=100.0, space=SPACE, finetune_epochs=1,
                max_finetunes=1, calib_size=8, rounds=2, iters=3, warmup=1, export_winners=False, qat_epochs=0)
    base.update(kw)
    return O.OptimizeOptions(**base)


def log_kinds(out):
    return [json.loads(line)["kind"] + ":" + json.loads(line)["key"] for line in (out / "search.jsonl").open()]


def test_search_times_every_candidate_first_and_picks_the_fastest_within_budget(setup):
    spec = setup[0]
    o = opts(setup, "wide", export_winners=True)
    summary = O.run_optimize(spec, o)
    kinds = log_kinds(o.out)
    # latency of all 6 candidates (3 transforms x onnx, onnx-int8) before any accuracy
    first_acc = next(i for i, k in enumerate(kinds) if k.startswith("accuracy:"))
    assert max(i for i, k in enumerate(kinds) if k.startswith("latency-round:")) < first_acc
    rows = json.loads((o.out / "candidates.json").read_text())
    assert {r["key"] for r in rows} == {f"{p or 'dense'}|{t}" for p in SPACE for t in ("onnx", "onnx-int8")}
    w, d = summary["winners"]["onnx"], summary["decisions"]["onnx"]
    # a 100-point budget: every candidate meets it, so the front (all that the search's rounds cannot call
    # slower than the fastest) is re-timed head to head; among those tied on speed the smallest drop wins
    assert "latency-screen:onnx" in kinds and kinds.index("latency-screen:onnx") < first_acc
    assert all("h2h_vs_fastest" in r for r in rows)  # 6 candidates: all re-timed head to head, ranked by it
    assert d["contenders"][0].startswith(min(rows, key=lambda r: r["h2h_ms"])["key"] + "#")
    assert d["winner_key"] == f"{w['candidate']}#base"
    if len(d["contenders"]) == 1:  # the search's rounds called every other candidate slower
        assert "no other candidate" in d["why"] and all(s is None for s in d["screening"])
    else:
        assert d["winner"] in d["tied"] and d["fastest"] in d["tied"]
        tied_drops = [drop for k, drop in zip(d["contenders"], d["drops"]) if k in d["tied"]]
        assert w["drop_pts"] == min(tied_drops)
        for k, r in zip(d["contenders"], d["ratios_vs_fastest"]):
            assert (k in d["tied"]) == (r["ci95"][0] <= 1.0 <= r["ci95"][1])
    assert (o.out / "plot.png").stat().st_size > 10_000 and (o.out / "winner.yaml").exists()
    front = (o.out / "front.md").read_text()
    assert "Pareto front" in front and "Speed decision" in front
    assert ("| head-to-head ms | ÷ fastest [95 %] |" in front) == (len(d["contenders"]) > 1)  # the decision table
    assert (o.out / "winner-onnx" / "artifacts").is_dir()


def test_budget_nothing_meets_names_the_best_found(setup):
    spec = setup[0]
    o = opts(setup, "strict", max_drop=0.0, strict=True, finetune_epochs=0)
    with pytest.raises(SearchError) as e:
        O.run_optimize(spec, o)
    assert "no candidate is within --max-drop 0 pts (95 % upper bound)" in e.value.what
    assert "onnx: best found" in e.value.what and "--max-drop" in e.value.fix
    assert (o.out / "front.md").exists()  # the outputs are written before the error


def test_time_budget_ends_with_the_best_found_so_far(setup):
    spec = setup[0]
    o = opts(setup, "timed", time_budget_min=1e-4, max_drop=0.5)
    summary = O.run_optimize(spec, o)
    kinds = log_kinds(o.out)
    assert [k for k in kinds if k.startswith("exported:")] == ["exported:dense"]  # only the baseline is timed
    assert sum(k.startswith("latency-round:") for k in kinds) == 1  # one round, no more once spent
    assert summary["finetunes"] == [] and not any(k.startswith("accuracy:dense|onnx-int8") for k in kinds)
    assert summary["winners"]["onnx"]["candidate"] == "dense|onnx"  # the answer within the time: dense float


def test_killed_search_resumes_from_its_log(setup, monkeypatch):
    spec = setup[0]
    o = opts(setup, "killed", max_drop=0.0, max_finetunes=1)
    real, calls = O.Search._float_correct, []

    def dies(self, prune, tag):
        calls.append(prune)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of the accuracy phase
        return real(self, prune, tag)

    monkeypatch.setattr(O.Search, "_float_correct", dies)
    with pytest.raises(KeyboardInterrupt):
        O.run_optimize(spec, o)
    before = log_kinds(o.out)
    assert sum(k.startswith("accuracy:") for k in before) == 1
    with open(o.out / "search.jsonl", "a") as f:
        f.write('{"kind": "accuracy", "key": "torn')  # a line cut by the kill
    monkeypatch.setattr(O.Search, "_float_correct", real)
    exported = []
    monkeypatch.setattr(O, "run_export", lambda *a, **k: exported.append(a) or real_export(*a, **k))
    o2 = opts(setup, "killed", max_drop=0.0, max_finetunes=1, resume=True)
    try:
        O.run_optimize(spec, o2)
    except SearchError:
        pass  # a 0-point budget may still be unmet; resuming is what is tested
    after = log_kinds(o.out)
    assert after[:len(before)] == before  # nothing redone, nothing lost
    assert not any(k.startswith(("latency-round:", "exported:")) for k in after[len(before):])
    assert after.count(before[-1]) == 1  # the accuracy finished before the kill is not measured again
    assert not any(a[1].targets != ["onnx-int8"] for a in exported)  # no latency export redone
    with pytest.raises(SearchError, match="other settings"):
        O.run_optimize(spec, opts(setup, "killed", max_drop=3.0, resume=True))
    with pytest.raises(SearchError, match="--resume"):
        O.run_optimize(spec, opts(setup, "killed"))


real_export = O.run_export


def test_winner_yaml_rebuilds_the_winner(setup, tmp_path):
    spec = setup[0]
    o = opts(setup, "rebuild", space=[None, "evit:0.5@1"], max_drop=100.0, finetune_epochs=1,
             targets=["openvino"], export_winners=True)
    o.check()
    s = O.Search(spec, o)
    lat = s.latencies()
    s.finetune("evit:0.5@1", 1)  # make the winner a fine-tuned one, the hard case to rebuild
    best = O.walk_all(s, lat)
    from edgevit.run.winner import finish

    summary = finish(s, lat, best)
    w = summary["winners"]["openvino"]
    recipe = load_recipe(o.out / "winner.yaml")
    assert recipe.model.prune == (None if w["candidate"].startswith("dense") else w["candidate"].split("|")[0])
    from edgevit.run.recipe import BenchSection

    r = recipe.__class__(**{**recipe.__dict__, "out": str(tmp_path / "rebuilt"), "bench": BenchSection(enabled=False)})
    run = run_recipe(r)
    target = w["candidate"].split("|")[1]
    a = json.loads((run / "results" / "validate.json").read_text())[target]
    b = json.loads((o.out / "winner-openvino" / "results" / "validate.json").read_text())[target]
    assert a["top1"] == b["top1"] and a["images"] == b["images"]
    if w["weights"] == "fine-tuned":
        from safetensors.torch import load_file

        new = load_file(str(run / "model" / "weights.safetensors"))
        old = load_file(s.log.get("finetune", "evit:0.5@1#1")["weights"])
        assert all(torch.allclose(new[k], old[k], atol=1e-6) for k in old)


def test_space_scaling_and_front():
    space = default_space(12, 64)
    assert None in space and "evit:0.5@1,4,7" in space and "tome:3" in space and "evit:0.7@3,6,9+tome:2" in space
    assert scale_prune("evit:0.5@3,6,9+tome:4", 64, 196) == "evit:0.5@3,6,9+tome:12"
    cands = candidates([None, "tome:4"], ["openvino", "onnx"], 64, 196)
    assert len(cands) == 8 and Candidate("tome:4", "onnx-int8", "onnx", "tome:12") in cands
    assert pareto([(10, 3, "a"), (5, 5, "b"), (20, 0, "c"), (12, 4, "d"), (30, 0, "e")]) == ["b", "a", "c"]


def test_log_ignores_a_torn_last_line_and_refuses_a_bad_middle(tmp_path):
    log = SearchLog(tmp_path / "s.jsonl", {"a": 1}, resume=False)
    log.put("x", "1", v=np.float64(2.0).item())
    (tmp_path / "s.jsonl").write_text((tmp_path / "s.jsonl").read_text() + '{"kind": "x", "ke')
    again = SearchLog(tmp_path / "s.jsonl", {"a": 1}, resume=True)
    assert again.get("x", "1")["v"] == 2.0
    again.put("x", "2")
    assert SearchLog(tmp_path / "s.jsonl", {"a": 1}, resume=True).get("x", "2") is not None
    (tmp_path / "s.jsonl").write_text('{"kind": "config", "key": "search", "a": 1}\nnot json\n'
                                      '{"kind": "x", "key": "3"}\n')
    with pytest.raises(SearchError, match="line 2"):
        SearchLog(tmp_path / "s.jsonl", {"a": 1}, resume=True)


def test_cli_refuses_a_runtime_it_cannot_time_here_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from edgevit.cli import app

    res = CliRunner().invoke(app, ["optimize", "--model", "deit_tiny", "--data", str(tmp_path), "--target",
                                   "tensorrt-int8", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "TensorRT engines are timed on their GPU" in res.output
    assert not (tmp_path / "o").exists()


def test_recipe_optimize_section_is_checked(tmp_path):
    from edgevit.errors import RecipeError

    good = tmp_path / "good.yaml"
    good.write_text("model: {name: deit_tiny, pretrained: false}\ndata: {source: digits}\ntargets: [onnx]\n"
                    "optimize: {max_drop: 0.5, strict: true, transforms: ['evit:0.7', 'tome:2']}\n")
    r = load_recipe(good)
    assert r.optimize.max_drop == 0.5 and r.optimize.strict and r.optimize.transforms == ["evit:0.7", "tome:2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: deit_tiny}\noptimize: {max_dorp: 0.5}\n")
    with pytest.raises(RecipeError, match="max_drop"):
        load_recipe(bad)


def test_holdout_is_disjoint_from_fine_tune_and_calibration_images(tmp_path):
    from edgevit.data import load_split, train_part
    from edgevit.run.export import ExportOptions
    from edgevit.run.int8 import int8_inputs
    from edgevit.targets import get_target

    data = str(write_cifar(tmp_path / "c", n_train=100, n_test=20))
    train, held = load_split(data, "train", holdout=0.2), load_split(data, "holdout", holdout=0.2)
    assert len(train) + len(held) == 100 and not set(train.indices) & set(held.indices)
    assert sorted(train_part(data, holdout=0.2)) == sorted(train.indices)
    assert len(load_split(data, "train")) == 100  # without a holdout nothing is set aside
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
           "crop_pct": 1.0, "crop_mode": "center"}
    o = ExportOptions(targets=["onnx-int8"], out=tmp_path / "o", data=data, holdout=0.2,
                      options={"form": "static", "calib_size": 80})
    calib = int8_inputs(o, cfg, [get_target("onnx-int8")]).calib
    assert len(calib.images) == len(train) == 80  # every calibration image comes from the non-held-out part
    from edgevit.errors import DataError

    with pytest.raises(DataError, match="has 80 images"):  # the 20 held-out images are not in the pool
        int8_inputs(ExportOptions(targets=["onnx-int8"], out=tmp_path / "o", data=data, holdout=0.2,
                                  options={"form": "static", "calib_size": 81}), cfg, [get_target("onnx-int8")])


def test_next_finetune_short_first_then_longer_for_a_near_miss(tmp_path):
    from types import SimpleNamespace

    from edgevit.eval.stats import paired

    def drop(pts):  # a Paired with this drop on 100 images
        ref = np.zeros(100, bool)
        ref[:50] = True
        cand = ref.copy()
        cand[:pts] = False
        return paired(ref, cand)

    acc = {("evit:0.4", "base"): drop(6), ("evit:0.4", "ft2"): drop(2), ("evit:0.7", "base"): drop(12)}
    log = SearchLog(tmp_path / "s.jsonl", {}, resume=False)
    s = SimpleNamespace(opts=O.OptimizeOptions(targets=["onnx"], data="d", out=tmp_path, max_drop=1.0,
                                               finetune_epochs=2),
                        cands=candidates([None, "evit:0.4", "evit:0.7"], ["onnx"], 64, 64), log=log,
                        accuracy=lambda c, tag: acc[(c.prune, tag)])
    lat = {c.key: {"p50_ms": {"evit:0.7": 1.0, "evit:0.4": 2.0, None: 9.0}[c.prune] + c.int8 * 0.1}
           for c in s.cands}
    assert O.next_finetune(s, lat, {"onnx": None}) == ("evit:0.4", 2)  # evit:0.7 misses by 11 pts: hopeless
    fastest = next(c for c in s.cands if c.prune == "evit:0.7" and not c.int8)
    assert O.next_finetune(s, lat, {"onnx": (fastest, "base", drop(0))}) is None  # nothing faster to win
    log.put("finetune", "evit:0.4#2", prune="evit:0.4", epochs=2, seconds=10.0, weights="w")
    assert O.next_finetune(s, lat, {"onnx": None}) == ("evit:0.4", 4)  # 1 pt over after 2 epochs: twice as long
    log.put("finetune", "evit:0.4#4", prune="evit:0.4", epochs=4, seconds=20.0, weights="w")
    assert O.next_finetune(s, lat, {"onnx": None}) is None
    assert D.tags(s, "evit:0.4") == ["base", "ft2", "ft4"]


def logged_rounds(tmp_path, cands, ms):
    """A search stand-in whose log holds three timing rounds of ``cands`` (``ms``: each transform's
    figure per round), and those rounds."""
    from types import SimpleNamespace

    log = SearchLog(tmp_path / "search.jsonl", {"x": 1}, resume=False)
    rounds = [{c.key: {"p50_ms": ms[c.prune][r], "p90_ms": 1.0, "estimate_ms": ms[c.prune][r]} for c in cands}
              for r in range(3)]
    for r, rows in enumerate(rounds):
        log.put("latency-round", str(r), rows=rows)
    return SimpleNamespace(cands=cands, log=log, opts=SimpleNamespace(out=tmp_path, threads=None)), rounds


def test_decide_retimes_the_overlapping_front_and_gives_a_tie_to_the_smaller_drop(tmp_path, monkeypatch):
    """Deterministic: screening rounds in the log, accuracy and the head-to-head faked."""
    from types import SimpleNamespace

    from test_timing import synthetic

    from edgevit.eval.timing import RoundTimes
    from edgevit.run.search import median_of_rounds

    cands = [Candidate(p, "onnx", "onnx", p) for p in (None, "evit:0.5@1", "tome:2", "evit:0.4@1")]
    ms = {None: [10, 10, 10], "evit:0.5@1": [9.9, 10.4, 10.2], "tome:2": [9.8, 10.3, 10.1], "evit:0.4@1": [20, 21, 19]}
    s, rounds = logged_rounds(tmp_path, cands, ms)
    lat = median_of_rounds(rounds)
    drops = {None: 0.8, "evit:0.5@1": 0.2, "tome:2": 3.0, "evit:0.4@1": -1.0}  # tome misses a 1-point budget
    monkeypatch.setattr(D, "first_meeting", lambda s, c: ("base", SimpleNamespace(drop_pts=drops[c.prune]))
                        if drops[c.prune] <= 1.0 else None)
    timed = []

    def fake_timed(paths, **kw):
        timed.append(paths)
        return [{"p50_ms": 10.0}] * len(paths), RoundTimes(["?"] * len(paths), synthetic([10.0, 10.05], iters=1))

    monkeypatch.setattr(D, "bench_artifacts_timed", fake_timed)
    best, rec = D.decide(s, "onnx", lat, (cands[0], "base", SimpleNamespace(drop_pts=0.8)))
    # evit:0.4 is clearly slower in the search's rounds, tome:2 misses the budget: neither is re-timed
    assert rec["contenders"] == ["dense|onnx#base", "evit:0.5@1|onnx#base"]
    assert [p.parent.parent.name for p in timed[0]] == ["dense", "evit0.5-1"]
    assert rec["tied"] == rec["contenders"] and best[0] is cands[1]  # tied on speed: the smaller drop wins
    assert "wins on accuracy" in rec["why"]
    again, _ = D.decide(s, "onnx", lat, (cands[0], "base", SimpleNamespace(drop_pts=0.8)))
    assert again[0] is cands[1] and len(timed) == 1  # resumed from the log: not re-timed


def test_screen_reranks_the_fastest_by_a_head_to_head_and_the_front_uses_it(tmp_path, monkeypatch):
    """The search's rounds called keep 0.4 slower than keep 0.5 (blocks of runs misorder them); the
    head-to-head screen times it faster, so the walk tries it first and the decision's screening ratio
    comes from the screen. Deterministic: timings faked, nothing exported."""

    from test_timing import synthetic

    from edgevit.eval.timing import RoundTimes
    from edgevit.run.search import median_of_rounds, speed

    cands = [Candidate(p, "onnx-int8", "onnx", p) for p in (None, "evit:0.5@1", "evit:0.4@1", "tome:2")]
    ms = {None: [10, 10, 10], "evit:0.5@1": [3.1, 3.9, 3.2], "evit:0.4@1": [6.1, 4.6, 4.2], "tome:2": [8, 8, 8]}
    s, rounds = logged_rounds(tmp_path, cands, ms)
    lat = median_of_rounds(rounds)
    true = {"evit:0.5@1": 4.9, "evit:0.4@1": 4.45, "tome:2": 8.0, None: 10.0}
    timed = []

    def fake_timed(paths, **kw):
        timed.append([p.parent.parent.name for p in paths])
        order = [next(c.prune for c in cands if D.latency_path(s, c) == p) for p in paths]
        t = synthetic([true[p] for p in order], rounds=kw["rounds"], iters=kw["iters"])
        return [{}] * len(paths), RoundTimes(["?"] * len(paths), t)

    monkeypatch.setattr(D, "bench_artifacts_timed", fake_timed)
    monkeypatch.setattr(D, "SCREEN_TOP", 3)
    D.screen(s, "onnx", lat)
    assert timed == [["evit0.5-1", "evit0.4-1", "tome2"]]  # the 3 fastest by the rounds, the dense one left out
    by_speed = sorted(cands, key=lambda c: speed(lat[c.key]))
    assert [c.prune for c in by_speed] == ["evit:0.4@1", "evit:0.5@1", "tome:2", None]
    assert lat["evit:0.4@1|onnx-int8"]["h2h_vs_fastest"]["ratio"] == 1.0
    r = D.screening_ratio(s, "evit:0.5@1|onnx-int8", "evit:0.4@1|onnx-int8")
    assert r.rounds >= D.H2H_ROUNDS and r.ci95[0] > 1.0  # from the screen's rounds, not the 3 block rounds
    assert D.screening_ratio(s, "dense|onnx-int8", "evit:0.4@1|onnx-int8").rounds == 3  # not screened: the rounds
    lat2 = median_of_rounds(rounds)
    D.screen(s, "onnx", lat2)
    assert len(timed) == 1 and lat2["evit:0.4@1|onnx-int8"]["h2h_ms"] == lat["evit:0.4@1|onnx-int8"]["h2h_ms"]
