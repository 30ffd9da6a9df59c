"""ExecuTorch targets: fp32 and PT2E int8 .pte programs, XNNPACK-delegated, run here by ExecuTorch's runtime."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install -e '.[mobile]' has it)")

from conftest import artifact_manifest, export_pruned, tiny_spec  # noqa: E402

from edgevit.errors import ArtifactError, ExportError  # noqa: E402
from edgevit.run.artifacts import load_artifact  # noqa: E402
from edgevit.run.export import ExportOptions, run_export  # noqa: E402
from edgevit.targets import ExportContext, get_target  # noqa: E402
from edgevit.targets import executorch as et  # noqa: E402
from edgevit.transforms import build_model  # noqa: E402

TARGETS = ("executorch", "executorch-int8")


@pytest.fixture(scope="module")
def et_run(tmp_path_factory, tiny_checkpoint):
    return export_pruned(tmp_path_factory.mktemp("executorch") / "r", tiny_checkpoint, TARGETS)


def test_pruned_model_exports_runs_and_matches_pytorch(et_run):
    fp32, int8 = (artifact_manifest(et_run, t) for t in TARGETS)
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
    assert int8["export"]["quantized_ops"].startswith("linear, conv2d")  # residual adds stay float by default
    assert int8["runtime"]["precision"] == "int8/fp32"
    assert 0.15 < int8["size_bytes"] / fp32["size_bytes"] < 0.4  # int8 weights are a quarter of fp32's
    assert set(json.loads((et_run / "results" / "validate.json").read_text())) == set(TARGETS)


def test_delegation_report_in_manifest_and_inspect(et_run):
    from edgevit import api

    for t in TARGETS:
        d = artifact_manifest(et_run, t)["export"]["delegation"]
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


def test_a_model_that_does_not_export_or_lower_is_an_export_error(monkeypatch):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ExportError, match="torch.export failed"):
        et.export_program(DataDependent(), torch.zeros(1, 3, 4, 4))

    def refuse(*a, **k):
        raise RuntimeError("Missing out variants: {'aten::_fancy_op'} for aten.fancy_op.default")

    class Sorts(torch.nn.Module):  # lowers, but the runtime has no sort kernel: refused at export, not at load
        def forward(self, x):
            return x.sort(dim=-1).values * 2

    with pytest.raises(ExportError, match="no kernel for aten::sort.values, which XNNPACK did not take"):
        et.lower(et.export_program(Sorts(), torch.zeros(1, 8)))

    monkeypatch.setattr("executorch.exir.to_edge_transform_and_lower", refuse)
    with pytest.raises(ExportError, match="could not lower the model at op aten.fancy_op.default"):
        et.lower(et.export_program(torch.nn.Linear(4, 2), torch.zeros(1, 4)))


def test_xnnpack_quantize_is_checked_before_any_work(tmp_path):
    from edgevit.errors import OptionError

    with pytest.raises(OptionError, match="--xnnpack-quantize 'most' is not one of gemm, all"):
        run_export(tiny_spec(), ExportOptions(targets=["executorch-int8"], out=tmp_path / "r", data="digits",
                                              bench=False, options=dict(xnnpack_quantize="most")))
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "artifacts").exists()
