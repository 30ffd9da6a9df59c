import dataclasses
import json

import numpy as np

from edgevit.eval.latency import peak_memory, summarize, time_fn


def test_summarize_percentiles_and_throughput():
    s = summarize(np.arange(1, 101, dtype=float), batch=4)
    assert s["p50_ms"] == 50.5 and abs(s["p90_ms"] - 90.1) < 1e-9 and abs(s["p99_ms"] - 99.01) < 1e-9
    assert abs(s["throughput_ips"] - 4 * 1000 / 50.5) < 1e-9 and s["runs"] == 100


def test_time_fn_warms_up_then_times():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=3, iters=7)
    assert len(t) == 7 and len(calls) == 10 and (t >= 0).all()


def test_peak_memory_sees_an_allocation():
    with peak_memory() as m:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del a
    assert m["peak_mb"] > 50


def test_gpu_rows_code_path_runs_on_any_device():
    """The PyTorch GPU rows (fp32, fp16, compile) on the CPU device: the same code a CUDA machine runs."""
    from conftest import tiny_spec

    from edgevit.eval.latency import bench_torch_gpu
    from edgevit.models import create_model

    model = create_model(tiny_spec()).eval()
    x = np.zeros((1, 3, 32, 32), np.float32)
    rows = bench_torch_gpu(model, x, warmup=1, iters=3, device="cpu", compile=False)
    assert [r["name"] for r in rows] == ["pytorch-cpu-fp32", "pytorch-cpu-fp16"]
    assert all(r["p50_ms"] > 0 and r["runs"] == 3 for r in rows)
    assert rows[1]["precision"] == "fp16" and rows[1]["size_mb"] < rows[0]["size_mb"]


def test_noise_facts_on_hand_made_timings():
    from edgevit.eval.latency import noise_facts

    quiet = noise_facts([np.array([10.0, 10.1, 10.2, 10.3, 10.4]), np.array([10.2, 10.3, 10.4, 10.5, 10.6])])
    assert quiet["noisy"] is False and quiet["why"] is None
    assert quiet["rounds_p50_ms"] == [10.2, 10.4] and abs(quiet["round_spread_pct"] - 100 * 0.2 / 10.3) < 1e-9
    assert 1.0 < quiet["p90_over_p50"] < 1.05
    busy = noise_facts([np.array([10.0] * 8 + [90.0, 90.0])])  # p90 at 90 ms, p50 at 10 ms
    assert busy["noisy"] and busy["round_spread_pct"] is None and busy["rounds_p50_ms"] == [10.0]
    assert busy["p90_over_p50"] == 9.0 and busy["why"].startswith("p90 is 9.0x p50: the machine was busy")
    assert "quiet machine" in busy["why"]
    drift = noise_facts([np.full(5, 10.0), np.full(5, 14.0), np.full(5, 10.0)])  # one slow round
    assert drift["noisy"] and drift["round_spread_pct"] == 40.0 and "between rounds" in drift["why"]


def test_rounds_interleave_load_once_and_take_medians():
    from edgevit.eval.latency import Subject, bench_rounds

    calls, loads = [], []

    def subject(name, ms):
        def make():
            loads.append(name)
            return lambda x: calls.append(name)
        return Subject(name, make, resident_mb=1.0 if name == "a" else 0.0)

    rows = bench_rounds([subject("a", 1), subject("b", 2)], np.zeros((1, 3)), warmup=1, iters=5, rounds=4)
    assert loads == ["a", "b"]  # each loaded once, reused across rounds
    assert calls[:2] == ["a", "b"]  # loaded and warmed up, then the rounds
    blocks = [calls[i:i + 6] for i in range(2, len(calls), 6)]  # one warm-up + 5 timed runs of one subject
    assert len(blocks) == 8 and all(len(set(b)) == 1 for b in blocks)
    rounds = [{b[0] for b in blocks[k:k + 2]} for k in range(0, 8, 2)]
    assert all(r == {"a", "b"} for r in rounds)  # every round times both, in its own random order
    assert len({blocks[k][0] for k in range(0, 8, 2)}) == 2  # (seed 0: not always the same one first)
    for r in rows:
        assert r["rounds"] == 4 and r["runs"] == 20 and len(r["noise"]["rounds_p50_ms"]) == 4
        assert r["p50_ms"] == float(np.median(r["noise"]["rounds_p50_ms"])) and r["estimate_ms"] >= 0
    assert rows[0]["peak_mem_mb"] >= 1.0  # what it held before loading is counted


def test_bench_artifacts_in_rounds_with_noise_cpu_and_eager_weights(tmp_path):
    """rounds=2 on a tiny ONNX export: per-round figures, medians, CPU facts, an eager peak memory that
    counts its weights (it used to read ~0 MB, the model being resident before timing)."""
    from conftest import tiny_spec

    from edgevit.eval.latency import model_mb
    from edgevit.eval.machine import cpu_facts
    from edgevit.run.artifacts import bench_artifacts, float_model_for
    from edgevit.run.export import ExportOptions, run_export

    run = run_export(tiny_spec(), ExportOptions(targets=["onnx"], out=tmp_path / "r", bench=False))
    rows = bench_artifacts([run / "artifacts" / "onnx"], warmup=1, iters=5, rounds=2, gpu=False)
    assert [r["name"] for r in rows] == ["pytorch-eager", "onnx"]
    assert rows[1]["ratio_vs_first"]["b"] == "pytorch eager" and rows[1]["ratio_vs_first"]["rounds"] == 2
    for r in rows:
        per = r["noise"]["rounds_p50_ms"]
        assert len(per) == 2 and r["rounds"] == 2 and r["runs"] == 10
        assert abs(r["p50_ms"] - float(np.median(per))) < 1e-12 and r["noise"]["round_spread_pct"] is not None
        assert isinstance(r["noise"]["noisy"], bool) and r["cpu"] == cpu_facts() and r["peak_mem_note"]
        assert r["speedup_vs_eager"] == rows[0]["p50_ms"] / r["p50_ms"]
    assert "cpu" in rows[0]["cpu"] and "isa" in rows[0]["cpu"]
    assert rows[0]["peak_mem_mb"] >= model_mb(float_model_for(json_manifest(run)))
    assert "dense_eager" not in rows[0]  # not a pruned model
    one = bench_artifacts([run / "artifacts" / "onnx"], warmup=1, iters=3, gpu=False)
    assert one[1]["rounds"] == 1 and one[1]["noise"]["round_spread_pct"] is None and one[1]["runs"] == 3


def json_manifest(run):
    import json

    return json.loads((run / "artifacts" / "onnx" / "manifest.json").read_text())


def test_bench_compare_prints_each_ratio_against_the_first_with_its_interval(tmp_path):
    """`edgevit bench A B --compare`: B / A with its bootstrap interval and a verdict, no eager row."""
    from conftest import tiny_spec
    from typer.testing import CliRunner

    from edgevit.cli import app
    from edgevit.run.export import ExportOptions, run_export

    run = run_export(tiny_spec(), ExportOptions(targets=["onnx", "openvino"], out=tmp_path / "r", bench=False))
    a, b = (str(run / "artifacts" / t) for t in ("onnx", "openvino"))
    res = CliRunner().invoke(app, ["bench", a, b, "--compare", "--rounds", "30", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert "openvino / onnx = " in res.output and "95 % interval" in res.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in rows] == ["onnx", "openvino"]  # the first artifact is the baseline, no eager row
    q = rows[1]["ratio_vs_first"]
    assert q["ci95"][0] <= q["ratio"] <= q["ci95"][1] and q["verdict"] in ("faster", "slower", "tied")
    # one run per round by default with --compare, 30 rounds and then more (at most 120) until ±5 %
    ctx = rows[1]["timing"]
    assert rows[1]["runs"] == ctx["rounds_run"] and 30 <= ctx["rounds_run"] <= 120 and ctx["precision_pct"] == 5
    n = ctx["rounds_run"]
    assert f"rounds: 30 planned, {n} run" in res.output and f"over {n} rounds" in res.output
    fixed = CliRunner().invoke(app, ["bench", a, b, "--compare", "--rounds", "25", "--precision", "0",
                                     "--json", str(tmp_path / "f.json")])
    assert fixed.exit_code == 0 and json.loads((tmp_path / "f.json").read_text())[1]["runs"] == 25
    bad = CliRunner().invoke(app, ["bench", a, "--compare"])
    assert bad.exit_code == 2 and "two things to compare" in bad.output


def test_two_artifacts_of_one_target_keep_their_own_rows(tmp_path):
    """A dense and a pruned export's `onnx` timed together: rows named by run, neither hides the other."""
    from conftest import tiny_spec
    from typer.testing import CliRunner

    from edgevit.cli import app
    from edgevit.run.artifacts import row_names
    from edgevit.run.export import ExportOptions, run_export

    spec = tiny_spec()
    dense = run_export(spec, ExportOptions(targets=["onnx"], out=tmp_path / "dense", bench=False, validate=False))
    pruned = run_export(dataclasses.replace(spec, prune="evit:0.5@1"),
                        ExportOptions(targets=["onnx"], out=tmp_path / "pruned", bench=False, validate=False))
    a, b = dense / "artifacts" / "onnx", pruned / "artifacts" / "onnx"
    res = CliRunner().invoke(app, ["bench", str(a), str(b), "--compare", "--rounds", "10", "--precision", "0",
                                   "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in rows] == ["dense/onnx", "pruned/onnx"] and rows[1]["target"] == "onnx"
    assert "pruned/onnx / dense/onnx = " in res.output
    assert row_names([(a, {"target": "onnx"}), (a, {"target": "onnx"})]) == ["dense/onnx#0", "dense/onnx#1"]
