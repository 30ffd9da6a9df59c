"""benchmarks/_common.py: results files keep one entry per CPU ISA class; per-class bars; figures."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402
import int8_cpu  # noqa: E402
import latency_cpu  # noqa: E402

from edgevit.eval.machine import isa_class, missing_int8_isa  # noqa: E402

CHECKER = ROOT.parent / "shared" / "tools" / "check_results.py"
AVX2 = ["avx2"]
VNNI = ["avx2", "avx512f", "avx512_vnni"]
AMX = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
# one CPU of each class, and where a class holds CPUs with and without bf16, one of each
KINDS = {"avx2": [AVX2], "avx-vnni": [["avx2", "avx_vnni"]], "avx512": [["avx2", "avx512f"]],
         "avx512-vnni": [VNNI, [*VNNI, "avx512_bf16"]], "amx": [AMX]}


@pytest.fixture
def on(monkeypatch, tmp_path):
    """``on(isa)``: from now on this machine has ``isa``; results go to tmp_path."""
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench.py", "--rounds", "1"])

    def set_isa(isa):
        monkeypatch.setattr(_common, "isa", lambda: isa)
    return set_isa


def run(rows, checks, **extra) -> dict:
    return json.loads(_common.write_results("bench.py", rows, checks, **extra).read_text())


def verdict(path: Path, capsys) -> tuple[int, str]:
    if not CHECKER.is_file():
        pytest.skip(f"{CHECKER} absent")
    spec = importlib.util.spec_from_file_location("check_results", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    capsys.readouterr()
    rc = mod.main(str(path), [])
    return rc, capsys.readouterr().out


def test_a_run_of_a_new_class_keeps_the_other_classes_entry(on):
    on(AVX2)
    first = run([{"name": "a", "p50_ms": 2.0}], [_common.check("speedup", 1.1, ">=", 1.0)], rounds=1)
    on(AMX)
    data = run([{"name": "a", "p50_ms": 1.0}], [_common.check("speedup", 2.0, ">=", 1.0)], note="amx")
    assert list(data["entries"]) == ["avx2", "amx"]
    assert data["entries"]["avx2"] == first["entries"]["avx2"]  # untouched, byte for byte
    assert data["entries"]["amx"]["machine"]["isa"] == AMX and data["entries"]["amx"]["note"] == "amx"
    assert data["command"] == data["entries"]["amx"]["command"] == "python benchmarks/bench.py --rounds 1"
    assert data["rows"] == [{"isa_class": "avx2", "name": "a", "p50_ms": 2.0},
                            {"isa_class": "amx", "name": "a", "p50_ms": 1.0}]
    assert [(c["isa_class"], c["value"], c["ok"]) for c in data["checks"]] == [("avx2", 1.1, True), ("amx", 2.0, True)]


def test_a_run_of_the_same_class_replaces_its_entry_whole(on):
    on(VNNI)
    run([{"name": "old"}], [_common.check("x", 1.0, "<=", 2.0)], only_in_first=True)
    on(AMX)
    run([{"name": "amx"}], [_common.check("x", 1.5, "<=", 2.0)])
    on(VNNI)
    data = run([{"name": "new"}], [_common.check("x", 3.0, "<=", 2.0)])
    entry = data["entries"]["avx512-vnni"]
    assert "only_in_first" not in entry and entry["rows"] == [{"name": "new"}]  # nothing of the first run left
    assert [c["value"] for c in entry["checks"]] == [3.0]
    assert list(data["entries"]) == ["avx512-vnni", "amx"]
    assert [r["name"] for r in data["rows"]] == ["new", "amx"]


def old_file(isa) -> dict:
    return {"command": "python benchmarks/bench.py", "created": "2026-11-30T20:41:43+00:00",
            "machine": {"cpu": "AMD EPYC", "cores": 2, **({} if isa is None else {"isa": isa})},
            "versions": {"python": "3.11.7"}, "info": {"k": 1}, "rows": [{"name": "a", "p50_ms": 3.0}],
            "checks": [{"name": "s", "value": 1.09, "op": ">=", "bar": 1.3, "ok": False}]}


def test_an_old_file_becomes_the_entry_of_its_own_class(on, tmp_path, capsys):
    old = old_file(VNNI)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(old))
    before = verdict(path, capsys)
    _common.migrate(path)
    data = json.loads(path.read_text())
    assert data["entries"] == {"avx512-vnni": old} and data["command"] == old["command"]
    assert data["checks"] == [{"isa_class": "avx512-vnni", **old["checks"][0]}] and "figures" not in data
    assert verdict(path, capsys)[0] == before[0] == 1
    path.write_text(json.dumps(old))  # and on the first write of a new run, without migrate()
    on(AVX2)
    data = run([{"name": "b"}], [_common.check("s", 2.0, ">=", 1.3)])
    assert data["entries"]["avx512-vnni"] == old and set(data["entries"]) == {"avx2", "avx512-vnni"}


def test_an_old_file_without_isa_is_the_unknown_class(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(old_file(None)))
    assert list(_common.load_entries(path)) == ["unknown"]


def test_derived_checks_are_what_check_results_recomputes(on, tmp_path, capsys):
    on(AVX2)
    run([], [_common.check("speedup", 1.2, ">=", 1.0)])
    assert verdict(tmp_path / "bench.json", capsys)[0] == 0
    on(AMX)
    path = _common.write_results("bench.py", [], [_common.check("speedup", 0.9, ">=", 1.0)])
    rc, out = verdict(path, capsys)
    assert rc == 1 and "1 SHORT" in out and "speedup = 0.9 fails >= 1.0" in out  # the amx entry's, beside avx2's
    on(VNNI)
    _common.write_results("bench.py", [], [_common.check("speedup", 1.5, ">=", 1.0)])
    assert verdict(path, capsys)[0] == 1  # amx's miss stays: a new class never hides another's


def test_isa_bar_is_the_bar_of_this_machines_class(on):
    on(AVX2)
    assert _common.isa_bar({"avx2": None}, default=1.3) is None
    assert _common.isa_bar({"amx": 2.0}) is None and _common.isa_bar({"amx": 2.0}, default=1.0) == 1.0
    on(AMX)
    assert _common.isa_bar({"avx2": None}, default=1.3) == 1.3
    on(None)
    assert _common.isa_bar({"unknown": 0.5}) == 0.5
    with pytest.raises(AssertionError, match="not ISA classes"):
        _common.isa_bar({"avx512_vnni": 1.0})


def test_a_bar_that_does_not_apply_makes_a_figure_not_a_check(on, capsys):
    on(AVX2)
    bar = _common.isa_bar({"avx2": None}, default=1.3)
    with pytest.raises(AssertionError, match="needs the reason"):
        _common.check("int8_speedup", 1.09, ">=", bar)
    fig = _common.check("int8_speedup", 1.09, ">=", bar, why="no VNNI")
    assert fig == {"name": "int8_speedup", "value": 1.09, "why": "no VNNI"}
    data = run([], [fig, _common.check("drop", 0.1, "<=", 0.5)])
    assert "FIGURE int8_speedup = 1.09 (no bar: no VNNI)" in capsys.readouterr().out
    assert data["entries"]["avx2"]["figures"] == [fig]
    assert [c["name"] for c in data["entries"]["avx2"]["checks"]] == ["drop"]
    assert data["figures"] == [{"isa_class": "avx2", **fig}] and [c["name"] for c in data["checks"]] == ["drop"]
    on(VNNI)
    data = run([], [_common.check("int8_speedup", 1.6, ">=", _common.isa_bar({"avx2": None}, 1.3), why="-"),
                    _common.check("drop", 0.1, "<=", 0.5)])
    assert "figures" not in data["entries"]["avx512-vnni"] and data["entries"]["avx2"]["figures"] == [fig]
    assert [(c["isa_class"], c["name"]) for c in data["checks"]] == [("avx2", "drop"), ("avx512-vnni", "int8_speedup"),
                                                                     ("avx512-vnni", "drop")]


def test_read_entry_gives_this_class_or_the_one_asked(on):
    on(AVX2)
    run([{"name": "a"}], [_common.check("x", 1.0, ">=", 0.0)])
    assert _common.read_entry("bench.py")["rows"] == [{"name": "a"}]
    assert _common.read_entry("bench.py", "amx") is None and _common.read_entry("other.py") is None
    on(AMX)
    assert _common.read_entry("bench.py") is None and _common.read_entry("bench.py", "avx2")["rows"] == [{"name": "a"}]


def test_an_unreadable_file_is_set_aside_not_lost(on, tmp_path):
    (tmp_path / "bench.json").write_text("{not json")
    on(AVX2)
    data = run([], [_common.check("x", 1.0, ">=", 0.0)])
    assert list(data["entries"]) == ["avx2"]
    assert [p.read_text() for p in tmp_path.glob("bench.json.unreadable-*")] == ["{not json"]


def test_the_scripts_per_class_bars_follow_the_instruction_sets():
    for cls, kinds in KINDS.items():
        for isa in kinds:
            assert isa_class(isa) == cls
            # int8_cpu: no bar exactly where the CPU has no int8 dot-product instructions
            assert (cls in int8_cpu.NO_INT8_DOT) == (missing_int8_isa(isa) is not None)
            # latency_cpu: no bar only on classes whose CPUs never have bf16
            if cls in latency_cpu.NO_BF16:
                assert not {"avx512_bf16", "amx_bf16"} & set(isa)
    assert any({"avx512_bf16"} & set(isa) for isa in KINDS["avx512-vnni"])  # why that class keeps the bar
