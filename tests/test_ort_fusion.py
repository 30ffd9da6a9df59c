"""--ort-fusion: timm's attention packed into ONNX Runtime's Attention op, then ORT's transformer fusion;
the fused graph ships for `onnx` and is quantized (Attention -> QAttention) for onnx-int8's dynamic form."""
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_spec

from edgevit.errors import OptionError
from edgevit.graph import export_onnx
from edgevit.models import create_model
from edgevit.run.artifacts import load_artifact
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets import TARGETS
from edgevit.targets.onnx import pack_attention

FUSE = {"ort_fusion": True}


def biased_vit(spec):
    """A tiny ViT with non-zero biases and LayerNorm weights, as trained weights have (timm initialises
    biases to zero, and the exported graph then has no bias Adds for the fusion to take in)."""
    torch.manual_seed(0)
    model = create_model(spec).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
            elif "norm" in name:
                p.normal_(1, 0.1)
    return model


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    spec = tiny_spec()
    model = biased_vit(spec)
    out = tmp_path_factory.mktemp("fused") / "run"
    run_export(spec, ExportOptions(targets=["onnx", "onnx-int8"], out=out, bench=False, options=FUSE), model=model)
    return out, model


def test_fused_onnx_ships_attention_and_matches_pytorch(fused_run):
    out, model = fused_run
    target, runner, mf, art_dir = load_artifact(out / "artifacts" / "onnx")
    f = mf["export"]["ort_fusion"]
    assert mf["options"]["ort_fusion"] and f["attention_blocks"] == f["attention_fused"] == 2
    assert f["fused_ops"]["Attention"] == 2 and f["fused_ops"]["BiasGelu"] == 2 and f["warnings"] == []
    graph = ops(art_dir / "model.onnx")
    assert graph.count("Attention") == 2 and "Softmax" not in graph and "Split" not in graph
    assert mf["check_vs_pytorch"]["rel_max_abs_diff"] < 1e-3  # the fp32 tolerance held at export
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)  # batch 3: dynamic
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(runner(x) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert target.notice(mf, art_dir) is None


def test_fused_int8_quantizes_attention(fused_run):
    out, model = fused_run
    _, runner, mf, art_dir = load_artifact(out / "artifacts" / "onnx-int8")
    f = mf["export"]["ort_fusion"]
    assert f["fused_ops"]["QAttention"] == 2 and f["fused_ops"]["Attention"] == 0  # what ships
    assert mf["export"]["form"] == "ort-dynamic" and mf["export"]["layers"] == 2 * 4  # Attention, proj, fc1, fc2
    graph = ops(art_dir / "model.onnx")
    assert graph.count("QAttention") == 2 and "Softmax" not in graph
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.corrcoef(runner(x).ravel(), ref.ravel())[0, 1] > 0.9


def test_pack_attention_takes_timms_unfused_attention_path(tmp_path):
    """timm's two attention paths (F.scaled_dot_product_attention, and q * scale @ k^T) both pack."""
    model = create_model(tiny_spec()).eval()
    for block in model.blocks:
        block.attn.fused_attn = False
    export_onnx(model, 32, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert pack_attention(graph) == (2, [])
    assert [n.op_type for n in graph.graph.node].count("Attention") == 2


def test_pruned_blocks_stay_unfused_and_the_manifest_says_so(tmp_path):
    spec = tiny_spec(patch_size=4, extra={"depth": 3}, prune="evit:0.7@1")
    out = run_export(spec, ExportOptions(targets=["onnx"], out=tmp_path / "r", bench=False, options=FUSE))
    target, _, mf, art_dir = load_artifact(out / "artifacts" / "onnx")
    f = mf["export"]["ort_fusion"]
    assert (f["attention_blocks"], f["attention_fused"]) == (3, 2) and f["fused_ops"]["Attention"] == 2
    assert "token pruning" in f["not_fused"][0] and "fused in 2 of 3 blocks" in f["warnings"][0]
    assert "TopK" in ops(art_dir / "model.onnx")  # EViT's selection is still there
    assert mf["check_vs_pytorch"]["top1_agreement_pct"] == 100.0
    assert "warning: attention fused in 2 of 3" in target.notice(mf, art_dir)


def test_a_model_without_attention_is_refused(tmp_path):
    spec = tiny_spec(name="resnet18_cifar", patch_size=None, extra={})
    with pytest.raises(OptionError, match="model ResNet has no attention") as e:
        run_export(spec, ExportOptions(targets=["onnx"], out=tmp_path / "r", bench=False, options=FUSE))
    assert "drop --ort-fusion" in e.value.fix and not (tmp_path / "r").exists()


@pytest.mark.parametrize("targets,options,match", [
    (["onnx-int8"], {"form": "static"}, "static Q/DQ leaves ONNX Runtime's fused Attention float"),
    (["onnx-int8"], {"qat_epochs": 1}, "--ort-fusion with --qat-epochs"),
    (["onnx-fp16"], {}, "--ort-fusion is not honoured by onnx-fp16"),
    (["openvino"], {}, "it applies to onnx, onnx-int8"),
])
def test_forms_without_fusion_refuse_it_before_any_work(tmp_path, targets, options, match):
    if any(TARGETS[t].missing() for t in targets):
        pytest.skip(f"{targets} not installed")
    with pytest.raises(OptionError, match=match):
        run_export(tiny_spec(), ExportOptions(targets=targets, out=tmp_path / "r", bench=False,
                                              options={**FUSE, **options}))
    assert not (tmp_path / "r").exists()


def test_unfused_export_is_unchanged(tmp_path):
    out = run_export(tiny_spec(), ExportOptions(targets=["onnx"], out=tmp_path / "r", bench=False))
    mf = json.loads((out / "artifacts" / "onnx" / "manifest.json").read_text())
    assert "ort_fusion" not in mf["export"] and mf["options"] == {"ort_fusion": False}
    assert "Attention" not in ops(out / "artifacts" / "onnx" / "model.onnx")


def test_a_large_models_unsimplified_graph_ships_with_a_warning(tmp_path, monkeypatch):
    """Over 1.8 GB the graph is not simplified: the attention scale is computed at run time and the
    packing leaves attention alone; ORT's bias + GELU fusion still runs and int8 still quantizes it."""
    monkeypatch.setenv("EDGEVIT_ONNX_EXTERNAL_DATA", "1")
    out = run_export(tiny_spec(), ExportOptions(targets=["onnx", "onnx-int8"], out=tmp_path / "r", bench=False,
                                                options=FUSE))
    for name in ("onnx", "onnx-int8"):
        mf = json.loads((out / "artifacts" / name / "manifest.json").read_text())
        f = mf["export"]["ort_fusion"]
        assert f["attention_fused"] == 0 and "computed at run time" in f["warnings"][0]
        assert f["fused_ops"]["BiasGelu"] == 2 and mf["export"]["external_data"] == "model.onnx.data"
