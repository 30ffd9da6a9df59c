"""Every target in the table: export a tiny model, reload, predict, compare with PyTorch."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_spec

from edgevit.errors import TargetError
from edgevit.run.artifacts import load_artifact
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets import PLANNED, TARGETS, get_target

AVAILABLE = [n for n, t in TARGETS.items() if not t.missing()]  # coremltools is in the test extras
RUNNABLE = [n for n in AVAILABLE if not TARGETS[n].not_runnable()]  # CoreML runs on macOS only


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    opts = ExportOptions(targets=AVAILABLE, out=out, data="digits", split="val", validate_limit=40,
                         iters=3, warmup=1)
    run_export(tiny_spec(checkpoint=str(tiny_checkpoint)), opts)
    return out


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_exports_reloads_and_matches_pytorch(run_dir, name, tiny_checkpoint):
    from edgevit.models import create_model

    if name not in AVAILABLE:
        pytest.skip(f"{name} needs {', '.join(TARGETS[name].missing())}, not installed")
    if why := TARGETS[name].not_runnable():  # checked structurally at export; the manifest says so
        mf = json.loads((run_dir / "artifacts" / name / "manifest.json").read_text())
        assert mf["check_vs_pytorch"]["skipped"] == why and mf["size_bytes"] > 0
        s = mf["export"]["structure"]
        assert s["inputs"][0]["shape"] == [1, 3, 32, 32] and s["outputs"][0]["name"] == "logits"
        pytest.skip(f"{name}: structure checked; not run here ({why})")
    target, runner, mf, art_dir = load_artifact(run_dir / "artifacts" / name)
    assert mf["target"] == name and mf["precision"] == target.precision
    assert mf["model"]["checkpoint_sha256"] and torch.__version__.startswith(mf["versions"]["torch"])
    assert mf["command"] and mf["onnx"]["opset"] >= 17
    assert (art_dir / target.model_file).is_file() and mf["size_bytes"] > 0
    model = create_model(tiny_spec(checkpoint=str(tiny_checkpoint)))
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)  # batch 3: dynamic
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = runner(x)
    assert got.shape == (3, 10)
    if mf["precision"] == "int8":  # quantization error, not a wiring error: the logits still track
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9
    else:
        tol = 1e-4 if mf["precision"] == "fp32" else 0.15
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max())
    assert mf["check_vs_pytorch"]["images"] == 16


def test_onnx_graph_is_opset17_with_layernorm_and_dynamic_batch(run_dir):
    import onnx

    g = onnx.load(str(run_dir / "artifacts" / "onnx" / "model.onnx"))
    assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert any(n.op_type == "LayerNormalization" for n in g.graph.node)
    dims = g.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_onnx_runner_workers_do_not_spin(run_dir, monkeypatch):
    """An ORT session's idle workers would spin through whatever runs next on the same cores (another
    session timed beside it): edgevit's runner opens sessions with spinning off."""
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, opts, **kw: seen.append(opts) or real(path, opts, **kw))
    _, runner, _, _ = load_artifact(run_dir / "artifacts" / "onnx-int8", threads=2)
    assert [o.get_session_config_entry("session.intra_op.allow_spinning") for o in seen] == ["0"]
    assert seen[0].intra_op_num_threads == 2 and runner.info["intra_op_spinning"] is False


def test_validation_and_bench_results_cover_every_target(run_dir):
    val = json.loads((run_dir / "results" / "validate.json").read_text())
    bench = json.loads((run_dir / "results" / "bench.json").read_text())
    assert set(val) == set(RUNNABLE)
    assert set(bench) == {"pytorch-eager", *RUNNABLE}
    for name, r in val.items():
        assert r["images"] == 40 and 0 <= r["agreement_pct"] <= 100
        if TARGETS[name].precision == "fp32":
            assert r["agreement_pct"] == 100.0 and r["top1_drop_pts"] == 0.0
    for r in bench.values():
        assert r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] and r["runs"] == 3


def test_unknown_and_planned_targets():
    with pytest.raises(TargetError, match="unknown target 'onnxx'"):
        get_target("onnxx")
    for name in PLANNED:
        with pytest.raises(TargetError, match="not built in this version"):
            get_target(name)


def test_missing_backend_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(type(TARGETS["openvino"]), "requires", ("openvino_not_installed_xyz",))
    opts = ExportOptions(targets=["openvino"], out=tmp_path / "run", bench=False)
    with pytest.raises(TargetError, match="pip install openvino_not_installed_xyz"):
        run_export(tiny_spec(), opts)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,kw", [
    ("deit_tiny_distilled", {"extra": {"depth": 1}}),  # two heads, averaged at inference
    ("vit_tiny", {"extra": {"depth": 1}}),
    ("mixer_s16_224", {"patch_size": None, "extra": {}}),  # no attention; any timm name passes through
])
def test_model_families_export_and_match(tmp_path, name, kw):
    """Export checks each artifact against PyTorch on real images; a mismatch would raise."""
    out = run_export(tiny_spec(name=name, **kw), ExportOptions(targets=["onnx", "openvino"], out=tmp_path / "r",
                                                               bench=False))
    for t in ("onnx", "openvino"):
        mf = json.loads((out / "artifacts" / t / "manifest.json").read_text())
        assert mf["model"]["name"] == name and mf["check_vs_pytorch"]["top1_agreement_pct"] == 100.0
