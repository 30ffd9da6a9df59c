"""A pruned artifact is validated against the dense model too (same images, same pass), and benched
beside the dense model in PyTorch eager; an unpruned one gets no dense fields."""
import json

import numpy as np
import torch
from conftest import tiny_spec

from edgevit import api
from edgevit.data import data_config, eval_transform, load_split
from edgevit.eval.stats import paired_drop_ci
from edgevit.models import create_model
from edgevit.run.artifacts import load_artifact
from edgevit.run.export import ExportOptions

DENSE = ("dense_top1", "top1_drop_vs_dense_pts", "top1_drop_vs_dense_ci95_pts", "only_dense_correct",
         "only_artifact_correct_vs_dense")


def test_pruned_artifact_has_a_drop_vs_dense_that_matches_scoring_by_hand(tmp_path):
    torch.manual_seed(0)
    dense_spec = tiny_spec(patch_size=4, extra={"depth": 3})
    dense = create_model(dense_spec).eval()
    ckpt = tmp_path / "dense.pth"
    torch.save(dense.state_dict(), ckpt)
    spec = tiny_spec(patch_size=4, extra={"depth": 3}, checkpoint=str(ckpt), pretrained=False)
    run = api.prune(spec, "evit:0.5@1", ExportOptions(targets=["onnx"], out=tmp_path / "r", data="digits",
                                                        split="val", validate_limit=60, warmup=1, iters=3))
    assert json.loads((run / "run.json").read_text())["dense_model"]["prune"] is None
    row = json.loads((run / "results" / "validate.json").read_text())["onnx"]
    assert row["dense_checkpoint"] == str(ckpt.resolve())

    # by hand: the dense model and the artifact on the same 60 images
    ds = load_split("digits", "val", eval_transform(data_config(dense, 32)), limit=60)
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float32)
    y = np.array([ds[i][1] for i in range(len(ds))])
    with torch.inference_mode():
        dense_ok = dense(torch.from_numpy(x)).numpy().argmax(1) == y
    _, runner, _, _ = load_artifact(run / "artifacts" / "onnx")
    art_ok = runner(x).argmax(1) == y
    only_dense, only_art = int((dense_ok & ~art_ok).sum()), int((art_ok & ~dense_ok).sum())
    assert row["images"] == 60 and abs(row["dense_top1"] - 100 * dense_ok.mean()) < 1e-9
    assert abs(row["top1_drop_vs_dense_pts"] - 100 * (dense_ok.mean() - art_ok.mean())) < 1e-9
    assert (row["only_dense_correct"], row["only_artifact_correct_vs_dense"]) == (only_dense, only_art)
    assert row["top1_drop_vs_dense_ci95_pts"] == paired_drop_ci(only_dense, only_art, 60)
    assert only_dense + only_art > 0  # pruning half the tokens of random weights changes predictions

    eager = json.loads((run / "results" / "bench.json").read_text())["pytorch-eager"]
    assert eager["dense_eager"]["name"] == "pytorch-eager-dense" and eager["dense_eager"]["p50_ms"] > 0
    assert "noise" in eager["dense_eager"] and "cpu" in eager["dense_eager"]


def test_unpruned_artifact_has_no_dense_fields(tmp_path):
    run = api.export(tiny_spec(), ExportOptions(targets=["onnx"], out=tmp_path / "r", data="digits", split="val",
                                                validate_limit=20, bench=False))
    row = json.loads((run / "results" / "validate.json").read_text())["onnx"]
    assert not set(DENSE) & set(row) and "dense_checkpoint" not in row
