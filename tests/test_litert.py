"""LiteRT targets: fp32 and PT2E int8 .tflite models, run here by LiteRT's interpreter (XNNPACK delegate)."""
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="LiteRT is not installed (pip install -e '.[mobile]' has it)")

from conftest import artifact_manifest, export_pruned, tiny_spec  # noqa: E402

from edgevit.errors import ArtifactError, ExportError  # noqa: E402
from edgevit.run.artifacts import load_artifact  # noqa: E402
from edgevit.run.export import ExportOptions, run_export  # noqa: E402
from edgevit.targets import ExportContext, get_target  # noqa: E402
from edgevit.targets import litert as lr  # noqa: E402
from edgevit.transforms import build_model  # noqa: E402

TARGETS = ("litert", "litert-int8")
EVIT_OPS = {"TOPK_V2", "GATHER_ND"}  # EViT's token selection: LiteRT's built-in kernels, not XNNPACK


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory, tiny_checkpoint):
    return export_pruned(tmp_path_factory.mktemp("litert") / "r", tiny_checkpoint, TARGETS)


def test_pruned_model_exports_runs_and_matches_pytorch(lr_run):
    fp32, int8 = (artifact_manifest(lr_run, t) for t in TARGETS)
    for mf in (fp32, int8):
        assert mf["files"] == ["model.tflite"] and mf["size_bytes"] == mf["export"]["tflite_bytes"] > 0
        assert mf["export"]["batch"] == "1 (static)" and "litert-torch 0.10" in mf["export"]["litert"]
        assert "fused_attn=False on 2" in mf["export"]["attention"] and mf["prune"]["spec"].startswith("evit")
        assert "XNNPACK" in mf["runtime"]["runtime"]
    assert fp32["check_vs_pytorch"]["max_abs_diff"] <= 1e-3 and fp32["check_vs_pytorch"]["top1_agreement_pct"] == 100
    assert fp32["export"]["input"]["dtype"] == "float32" and "scale" not in fp32["export"]["input"]
    i, o = int8["export"]["input"], int8["export"]["output"]
    assert i["dtype"] == o["dtype"] == "int8" and i["scale"] > 0 and -128 <= i["zero_point"] <= 127
    assert int8["runtime"]["io"].startswith("int8 input and output")
    assert int8["export"]["calibration"]["size"] == 16 and int8["export"]["form"] == "pt2e-litert"
    assert 0.15 < int8["size_bytes"] / fp32["size_bytes"] < 0.45  # int8 weights are a quarter of fp32's
    assert set(json.loads((lr_run / "results" / "validate.json").read_text())) == set(TARGETS)


def test_op_list_in_manifest_and_inspect(lr_run):
    from edgevit import api

    for t in TARGETS:
        d = artifact_manifest(lr_run, t)["export"]["delegation"]
        ops = d["op_list"]
        assert d["subgraphs"] >= 1 and d["ops"] == sum(v["count"] for v in ops.values())
        assert d["delegated_ops"] + d["non_delegated_ops"] == d["ops"] and d["delegated_ops"] > d["non_delegated_ops"]
        fc = ops["FULLY_CONNECTED"]
        assert EVIT_OPS <= set(d["non_delegated"]) and fc["delegated"] == fc["count"]
        assert (fc["int8"] > 0) == (t == "litert-int8") and "DELEGATE" not in ops
        res = api.inspect(lr_run / "artifacts" / t)
        assert res["delegation"]["summary"]["delegated ops"] == d["delegated_ops"]  # read again from the file
        assert any("TOPK_V2" in w for w in res["delegation"]["warnings"])
    assert artifact_manifest(lr_run, "litert-int8")["export"]["delegation"]["op_list"]["QUANTIZE"]["count"] > 0
    report = (lr_run / "report.md").read_text()
    assert "litert-int8" in report and "XNNPACK partitions" in report


@pytest.mark.parametrize("target", TARGETS)
def test_runner_loops_over_a_batch(lr_run, tiny_checkpoint, target):
    model = build_model(tiny_spec(checkpoint=str(tiny_checkpoint), prune="evit:0.5@1"))[0].eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    _, runner, _, _ = load_artifact(lr_run / "artifacts" / target, threads=1)
    y = runner(x)
    assert y.shape == (3, 10) and y.dtype == np.float32
    assert np.abs(y - ref).max() <= (1e-3 if target == "litert" else 0.5 * np.abs(ref).max())


def test_dense_export_leaves_the_callers_model_alone(tmp_path):
    model = build_model(tiny_spec())[0].eval()
    ctx = ExportContext(options=get_target("litert").Options(), input_size=[3, 32, 32], torch_model=model)
    facts = get_target("litert").export(tmp_path / "float.onnx", tmp_path, ctx)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert (tmp_path / "model.tflite").stat().st_size == facts["tflite_bytes"]
    assert facts["delegation"]["non_delegated_ops"] == 0  # a dense DeiT: XNNPACK takes every op


def test_truncated_tflite_is_an_artifact_error(lr_run, tmp_path):
    art = tmp_path / "litert"
    shutil.copytree(lr_run / "artifacts" / "litert", art)
    f = art / "model.tflite"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="model.tflite cannot be loaded by litert"):
        load_artifact(art)


def test_a_model_that_does_not_convert_is_an_export_error(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise RuntimeError("failed to legalize operation 'aten.fancy_op.default'")

    monkeypatch.setattr("litert_torch.convert", refuse)
    with pytest.raises(ExportError, match="LiteRT could not convert the model at op aten.fancy_op.default"):
        lr.convert(torch.nn.Linear(4, 2), torch.zeros(1, 4))
    with pytest.raises(ExportError, match="LiteRT could not convert"):
        run_export(tiny_spec(), ExportOptions(targets=["onnx", "litert"], out=tmp_path / "r", bench=False))
    assert not (tmp_path / "r" / "artifacts" / "litert").exists()
