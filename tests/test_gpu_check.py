"""benchmarks/gpu_check.py: the --dry-run code path on the CPU, the refusal without CUDA, and the int8 GEMM helper."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_dry_run_writes_every_variant_in_the_results_format(tmp_path):
    out = tmp_path / "x.json"
    r = _run("--dry-run", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["command"].startswith("python benchmarks/gpu_check.py --dry-run") and d["dry_run"] is True
    names = {row["name"] for row in d["rows"]}
    want = {f"{m}-{v}-b{b}" for m in ("deit_tiny", "deit_small") for v, _, _ in gpu_check.MODEL_VARIANTS
            for b in gpu_check.TOY["model_batches"]}
    want |= {f"block-{mode}-b{b}" for mode in gpu_check.BLOCK_MODES for b in (1, 8, 64)}
    assert names == want
    for row in d["rows"]:
        if row["name"].endswith(("compile-b1", "compile-b64")):
            assert "not run on CPU" in row["skipped"]
        else:
            assert row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"] and len(row["p50_ms_per_round"]) == 1
    blocks = [row for row in d["rows"] if row["kind"] == "block"]
    assert all(row["rel_err_vs_fp32"] < 0.05 for row in blocks)  # int8 blocks compute the block, roughly
    assert {c["name"] for c in d["checks"]} == {"int8_fp16_vs_int8_fp32_block_latency_ratio_b64",
                                                 "int8_fp16_vs_fp16_block_latency_ratio_b64"}
    for c in d["checks"]:
        assert set(c) >= {"name", "value", "op", "bar"} and c["op"] == "<=" and c["bar"] == 1.0
    assert d["machine"]["torch"] == torch.__version__ and "guard_s" in d["timing"]
    assert any("not int8" in n for n in d["notes"])


def test_without_cuda_it_refuses_with_a_message():
    r = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode != 0
    assert "no CUDA device" in r.stderr and "--dry-run" in r.stderr


def test_dry_run_never_writes_the_committed_result():
    r = _run("--dry-run", "--out", str(gpu_check.RESULTS / "gpu_check.json"))
    assert r.returncode != 0 and "never writes" in r.stderr


@pytest.mark.parametrize("m", [5, 17, 197])
def test_int8_linear_matches_a_float_matmul(m):
    g = torch.Generator().manual_seed(m)
    x, w, b = torch.randn(m, 64, generator=g), torch.randn(48, 64, generator=g) / 8, torch.randn(48, generator=g)
    mm, _ = gpu_check.pick_int_mm(torch.device("cpu"))
    q = gpu_check.prepare_int8(w, b, float(x.abs().amax()))
    ref = torch.nn.functional.linear(x, w, b)
    for dtype in (torch.float32, torch.float16):
        y = gpu_check.int8_linear(x.to(dtype), q, dtype, mm)
        assert y.dtype == dtype and y.shape == ref.shape
        assert float((y.float() - ref).norm() / ref.norm()) < 0.03


def test_int_mm_is_exact_and_pads_small_row_counts():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (5, 32), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (24, 32), generator=g, dtype=torch.int8).t()  # column-major, as the proxy passes it
    want = a.to(torch.int32) @ b.to(torch.int32)
    for mm in (gpu_check.pick_int_mm(torch.device("cpu"))[0], gpu_check._int_mm_emulated):
        got = gpu_check.int_mm(a, b, mm)
        assert got.dtype == torch.int32 and torch.equal(got, want)


def test_weight_quantization_is_per_channel():
    w = torch.tensor([[1.0, -0.5], [100.0, 50.0]])
    wq, scale = gpu_check.quantize_weight(w)
    assert wq.dtype == torch.int8 and wq.tolist() == [[127, -64], [127, 64]]
    assert torch.allclose(scale, torch.tensor([1 / 127, 100 / 127]))
