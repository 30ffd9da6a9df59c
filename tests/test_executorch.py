"""ExecuTorch targets: fp32 and PT2E int8 .pte programs, XNNPACK-delegated, run here by ExecuTorch's runtime."""
import importlib.util
import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install -e '.[mobile]' has it)")

from conftest import tiny_spec  # noqa: E402

from edgevit.errors import ArtifactError, ExportError, TargetError  # noqa: E402
from edgevit.quant.config import QuantizationError  # noqa: E402
from edgevit.run.artifacts import load_artifact  # noqa: E402
from edgevit.run.export import ExportOptions, run_export  # noqa: E402
from edgevit.targets import ExportContext, get_target  # noqa: E402
from edgevit.targets import executorch as et  # noqa: E402
from edgevit.transforms import build_model  # noqa: E402

TARGETS = ("executorch", "executorch-int8")


@pytest.fixture(scope="module")
def et_run(tmp_path_factory, tiny_checkpoint):
    """Both targets of an EViT-pruned tiny DeiT, calibrated on 16 digits images (no bench: the tests
    elsewhere time artifacts)."""
    out = tmp_path_factory.mktemp("executorch") / "r"
    run_export(tiny_spec(checkpoint=str(tiny_checkpoint), prune="evit:0.5@1"),
               ExportOptions(targets=list(TARGETS), out=out, data="digits", split="val", validate_limit=40,
                             bench=False, options=dict(calib_size=16)))
    return out


def _manifest(run, target):
    return json.loads((run / "artifacts" / target / "manifest.json").read_text())


def test_pruned_model_exports_runs_and_matches_pytorch(et_run):
    fp32, int8 = (_manifest(et_run, t) for t in TARGETS)
    for mf in (fp32, int8):
        assert mf["files"] == ["model.pte"] and mf["size_bytes"] == mf["export"]["pte_bytes"] > 0
        assert mf["export"]["batch"] == "1 (static)" and mf["export"]["executorch"].startswith("1.5")
        assert "fused_attn=False on 2" in mf["export"]["attention"]
        assert mf["prune"]["spec"].startswith("evit")
        assert "XNNPACK" in mf["runtime"]["runtime"]
    assert fp32["check_vs_pytorch"]["max_abs_diff"] <= 1e-3
    assert fp32["check_vs_pytorch"]["top1_agreement_pct"] == 100.0
    assert 0 <= int8["check_vs_pytorch"]["top1_agreement_pct"] <= 100  # recorded; a random-weight model
    assert int8["export"]["calibration"]["size"] == 16 and int8["export"]["form"] == "pt2e-xnnpack"
    assert int8["runtime"]["precision"] == "int8/fp32"
    assert 0.15 < int8["size_bytes"] / fp32["size_bytes"] < 0.4  # int8 weights are a quarter of fp32's
    assert set(json.loads((et_run / "results" / "validate.json").read_text())) == set(TARGETS)


def test_delegation_report_in_manifest_and_inspect(et_run):
    from edgevit import api

    for t in TARGETS:
        d = _manifest(et_run, t)["export"]["delegation"]
        assert d["backend"] == "XNNPACK" and d["subgraphs"] >= 1 and d["delegated_ops"] > d["non_delegated_ops"]
        assert d["non_delegated"]["aten_native_layer_norm_default"] == 5  # ExecuTorch 1.5 never delegates it
        assert "aten_linear_default" in d["delegated"] and "getitem" not in d["non_delegated"]
        assert "aten_where_self" not in d["non_delegated"]  # the fused SDPA's decomposition is gone
        res = api.inspect(et_run / "artifacts" / t)
        assert res["delegation"]["summary"]["delegated ops"] == d["delegated_ops"]
        assert any("layer_norm" in w for w in res["delegation"]["warnings"])
    report = (et_run / "report.md").read_text()
    assert "executorch-int8" in report and "XNNPACK subgraphs" in report


def test_runner_loops_over_a_batch(et_run, tiny_checkpoint):
    model = build_model(tiny_spec(checkpoint=str(tiny_checkpoint), prune="evit:0.5@1"))[0].eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    _, runner, _, _ = load_artifact(et_run / "artifacts" / "executorch")
    y = runner(x)
    assert y.shape == (3, 10) and y.dtype == np.float32 and np.abs(y - ref).max() <= 1e-3


def test_dense_export_leaves_the_callers_model_alone(tmp_path):
    model = build_model(tiny_spec())[0].eval()
    ctx = ExportContext(options=get_target("executorch").Options(), input_size=[3, 32, 32], torch_model=model)
    facts = get_target("executorch").export(tmp_path / "float.onnx", tmp_path, ctx)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))  # the copy was switched
    assert (tmp_path / "model.pte").stat().st_size == facts["pte_bytes"]
    assert facts["delegation"]["non_delegated"]["aten_native_layer_norm_default"] == 5


def test_truncated_pte_is_an_artifact_error(et_run, tmp_path):
    import shutil

    art = tmp_path / "executorch"
    shutil.copytree(et_run / "artifacts" / "executorch", art)
    pte = art / "model.pte"
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="model.pte cannot be loaded by executorch"):
        load_artifact(art)


def test_missing_extra_names_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    for t in TARGETS:
        assert "[mobile]" in get_target(t).status()
        with pytest.raises(TargetError, match="mobile") as e:
            get_target(t).check_available()
        assert ".[mobile]" in e.value.fix
    with pytest.raises(TargetError, match="mobile"):
        run_export(tiny_spec(), ExportOptions(targets=["executorch"], out=tmp_path / "r", bench=False))
    assert not (tmp_path / "r" / "artifacts").exists()


def test_too_small_calibration_is_refused(tmp_path):
    with pytest.raises(QuantizationError, match="at least 8 images"):
        run_export(tiny_spec(), ExportOptions(targets=["executorch-int8"], out=tmp_path / "r", data="digits",
                                              bench=False, options=dict(calib_size=4)))
    assert not (tmp_path / "r" / "artifacts").exists()
    with pytest.raises(QuantizationError, match="at least 8 images, and the calibration set has 3"):
        et.quantize(build_model(tiny_spec())[0].eval(), torch.zeros(1, 3, 32, 32), np.zeros((3, 3, 32, 32)))


def test_a_model_that_does_not_export_or_lower_is_an_export_error(monkeypatch):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ExportError, match="torch.export failed"):
        et.export_program(DataDependent(), torch.zeros(1, 3, 4, 4))

    def refuse(*a, **k):
        raise RuntimeError("Missing out variants: {'aten::_fancy_op'} for aten.fancy_op.default")

    monkeypatch.setattr("executorch.exir.to_edge_transform_and_lower", refuse)
    with pytest.raises(ExportError, match="could not lower the model at op aten.fancy_op.default"):
        et.lower(et.export_program(torch.nn.Linear(4, 2), torch.zeros(1, 4)))


def test_registry_answers():
    from edgevit.targets.registry import backends, families, float_twin_of, int8_targets, quantize_targets

    assert "executorch-int8" in int8_targets() and "executorch-int8" not in quantize_targets()
    assert float_twin_of("executorch-int8") == "executorch"
    assert families()["executorch"] == TARGETS
    assert backends()["executorch"][0] == "ExecuTorch"
    assert get_target("executorch-int8").isa_sensitive and get_target("executorch-int8").needs_calibration(None)


def test_targets_command_lists_them():
    from typer.testing import CliRunner

    from edgevit.cli import app

    res = CliRunner().invoke(app, ["targets"])
    assert res.exit_code == 0 and "executorch-int8" in res.output and "XNNPACK" in res.output


def test_optimize_searches_the_executorch_family(tmp_path):
    from edgevit.run.optimize import OptimizeOptions, run_optimize

    o = OptimizeOptions(targets=["executorch-int8"], data="digits", out=tmp_path / "opt", max_drop=100.0,
                        space=[None], finetune_epochs=0, max_finetunes=0, calib_size=8, rounds=2, iters=3, warmup=1,
                        export_winners=False, qat_epochs=0)
    summary = run_optimize(tiny_spec(), o)
    rows = json.loads((o.out / "candidates.json").read_text())
    assert {(r["key"], r["int8"]) for r in rows} == {("dense|executorch", False), ("dense|executorch-int8", True)}
    assert summary["winners"]["executorch"]
