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
