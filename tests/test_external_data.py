"""Large models (over protobuf's 2 GB): ONNX external data end to end, forced on the tiny model.

``EDGEVIT_ONNX_EXTERNAL_DATA=1`` makes every ONNX edgevit writes keep its tensors in
``<name>.data`` beside it, as ViT-H/14's 2.5 GB of weights need; the export, the output check,
ONNX Runtime, OpenVINO, int8 and the TensorRT artifact then run exactly as for a large model.
"""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_spec

from edgevit import graph as onnx_mod
from edgevit.run.artifacts import load_artifact
from edgevit.run.export import ExportOptions, run_export

ONNX_TARGETS = ["onnx", "onnx-fp16", "onnx-int8", "tensorrt-fp16", "tensorrt-int8"]
TARGETS = [*ONNX_TARGETS, "openvino"]
DATA = "model.onnx.data"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("ext") / "r"
    opts = ExportOptions(targets=TARGETS, out=out, data="digits", split="val", validate_limit=20, bench=False,
                         options=dict(calib_size=16, max_batch=2, timing_cache=None))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(onnx_mod.EXTERNAL_DATA_ENV, "1")
        run_export(tiny_spec(checkpoint=str(tiny_checkpoint)), opts)
    return out


def _float_model(tiny_checkpoint):
    from edgevit.models import create_model

    return create_model(tiny_spec(checkpoint=str(tiny_checkpoint)))


def test_float_onnx_is_written_with_external_data_and_not_simplified(run_dir):
    mf = json.loads((run_dir / "artifacts" / "onnx" / "manifest.json").read_text())
    assert mf["onnx"]["external_data"] is True
    assert mf["onnx"]["simplified"] is False and "2 GB" in mf["onnx"]["why"]


@pytest.mark.parametrize("name", ONNX_TARGETS)
def test_onnx_artifacts_hold_model_and_data_file(run_dir, name):
    art = run_dir / "artifacts" / name
    mf = json.loads((art / "manifest.json").read_text())
    model, data = art / "model.onnx", art / DATA
    assert data.is_file() and model.stat().st_size < data.stat().st_size / 4  # the weights are in the data file
    assert data.stat().st_mode == model.stat().st_mode  # not onnx's private 0600: the artifact is shared as a whole
    assert {"model.onnx", DATA} <= set(mf["files"])
    assert mf["size_bytes"] == sum((art / f).stat().st_size for f in mf["files"])
    assert mf["export"]["external_data"] == DATA
    assert mf["check_vs_pytorch"]["images"] == 16  # the output check ran on the external-data model
    g = onnx.load(str(model), load_external_data=False)
    locations = {e.value for t in g.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {DATA}  # relative to model.onnx, so the folder can be moved
    if name == "onnx":  # (fp16 conversion appends its casts out of topological order, as without external data)
        onnx.checker.check_model(str(model))


def test_tensorrt_artifacts_name_the_data_file_for_trtexec(run_dir):
    for name in ("tensorrt-fp16", "tensorrt-int8"):
        art = run_dir / "artifacts" / name
        e = json.loads((art / "manifest.json").read_text())["export"]
        assert e["trtexec_args"][0] == "--onnx=model.onnx" and (art / "build_engine.sh").is_file()
        assert e["external_data"] == DATA
    rules = json.loads((run_dir / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())["export"]
    assert rules["tensorrt_rules"]["violations"] == [] and rules["tensorrt_rules"]["dequantize"] > 0


@pytest.mark.parametrize("name", TARGETS)
def test_moved_artifacts_reload_and_match_pytorch(run_dir, name, tiny_checkpoint, tmp_path):
    moved = tmp_path / name
    shutil.copytree(run_dir / "artifacts" / name, moved)
    _, runner, mf, _ = load_artifact(moved)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = _float_model(tiny_checkpoint)(torch.from_numpy(x)).numpy()
    got = runner(x)
    if mf["precision"] == "int8":
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9
    else:
        tol = 1e-4 if mf["precision"] == "fp32" else 0.15
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max())


def test_validation_reads_every_artifact(run_dir):
    val = json.loads((run_dir / "results" / "validate.json").read_text())
    assert set(val) == set(TARGETS) and val["onnx"]["agreement_pct"] == 100.0


def test_size_alone_decides_external_data(monkeypatch, tmp_path, tiny_checkpoint):
    """Without the variable: over LARGE_BYTES of tensors -> external data; under it -> one file."""
    monkeypatch.delenv(onnx_mod.EXTERNAL_DATA_ENV, raising=False)
    model = _float_model(tiny_checkpoint)
    small = onnx_mod.export_onnx(model, 32, tmp_path / "small.onnx")
    assert small["external_data"] is False and small["simplified"] is True
    assert not onnx_mod.has_external_data(tmp_path / "small.onnx")
    monkeypatch.setattr(onnx_mod, "LARGE_BYTES", 10_000)
    big = onnx_mod.export_onnx(model, 32, tmp_path / "big.onnx")
    assert big["external_data"] is True and onnx_mod.has_external_data(tmp_path / "big.onnx")
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("small.onnx", "big.onnx", "big.onnx.data")]


def test_copy_rewrites_a_file_per_tensor_layout_into_one_data_file(monkeypatch, tmp_path, tiny_checkpoint):
    """A model saved with a file per tensor (torch's exporter over 2 GB) is copied as model.onnx + its .data."""
    monkeypatch.setenv(onnx_mod.EXTERNAL_DATA_ENV, "1")
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    onnx_mod.export_onnx(_float_model(tiny_checkpoint), 32, tmp_path / "f.onnx")
    m = onnx.load(str(tmp_path / "f.onnx"))
    onnx.save_model(m, str(src_dir / "q.onnx"), save_as_external_data=True, all_tensors_to_one_file=False)
    assert len(list(src_dir.iterdir())) > 3
    assert onnx_mod.copy_onnx(src_dir / "q.onnx", dst_dir / "model.onnx") == {"external_data": DATA}
    assert sorted(p.name for p in dst_dir.iterdir()) == ["model.onnx", DATA]
    shutil.rmtree(src_dir)
    onnx.checker.check_model(str(dst_dir / "model.onnx"))
