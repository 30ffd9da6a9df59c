"""Transforms compose ('evit:0.5+tome:2'), round-trip through recipes and manifests, and a transform
that changes weight shapes is applied before the weights load."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from conftest import tiny_spec

from edgevit import transforms
from edgevit.models import ModelSpec
from edgevit.run.export import ExportOptions, run_export
from edgevit.run.recipe import load_recipe, spec_from_recipe
from edgevit.transforms import TransformError, build_model


def test_composed_spec_plans_both_and_exports_matching_pytorch(tmp_path):
    spec = tiny_spec(patch_size=4, extra={"depth": 4}, prune="evit:0.5@2+tome:4")
    model, recorded, facts = build_model(spec)
    assert recorded.prune == "evit:0.5@2+tome:4" and facts["method"] == "evit+tome"
    assert facts["tokens_per_block"] == [60, 56, 25, 21]  # 4 merged per block; block 2 first keeps 28 of 56 (+1 fused)
    assert spec.prune == "evit:0.5@2+tome:4" and spec.checkpoint_sha256 is None  # the caller's spec is unchanged
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    out = run_export(spec, ExportOptions(targets=["onnx"], out=tmp_path / "r", bench=False))
    mf = json.loads((out / "artifacts" / "onnx" / "manifest.json").read_text())
    assert mf["model"]["prune"] == "evit:0.5@2+tome:4" and mf["check_vs_pytorch"]["top1_agreement_pct"] == 100.0


def test_default_locations_resolve_into_the_recorded_spec():
    _, recorded, _ = build_model(tiny_spec(patch_size=4, extra={"depth": 4}, prune="tome:2+evit:0.7"))
    assert recorded.prune == "tome:2+evit:0.7@1,2,3"
    again, _, _ = build_model(recorded)  # the recorded text rebuilds the same model
    assert isinstance(again.blocks, torch.nn.Sequential)


def test_composed_spec_round_trips_through_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: deit_tiny, pretrained: false, num_classes: 10, img_size: 32, patch_size: 4, "
                    "extra: {depth: 4}, prune: 'evit:0.5@2+tome:4'}\ntargets: [onnx]\n")
    recipe = load_recipe(path)
    assert recipe.model.prune == "evit:0.5@2+tome:4" and recipe.to_dict()["model"]["prune"] == recipe.model.prune
    assert spec_from_recipe(recipe).prune == "evit:0.5@2+tome:4"
    path.write_text(path.read_text().replace("tome:4", "tomb:4"))
    with pytest.raises(Exception, match="unknown transform spec 'tomb:4'"):
        load_recipe(path)


@pytest.mark.parametrize("bad,message", [("evit:0.5+evit:0.7", "evit appears twice"),
                                         ("evit:0.5+", "unknown transform spec ''")])
def test_bad_compositions(bad, message):
    with pytest.raises(TransformError, match=message):
        build_model(tiny_spec(patch_size=4, extra={"depth": 4}, prune=bad))


@transforms.register
class MlpWidth:
    """A shape-changing transform (narrower MLPs), registered from a test as a user would."""

    name, changes_shapes, forms = "mlpwidth", True, "mlpwidth:H"

    def __init__(self, hidden: int):
        self.hidden = hidden

    @classmethod
    def parse(cls, arg: str) -> MlpWidth:
        return cls(int(arg))

    def __str__(self) -> str:
        return f"{self.name}:{self.hidden}"

    def apply(self, model: torch.nn.Module) -> None:
        for blk in model.blocks:
            mlp = blk.mlp
            mlp.fc1, mlp.fc2 = (torch.nn.Linear(mlp.fc1.in_features, self.hidden),
                                torch.nn.Linear(self.hidden, mlp.fc2.out_features))

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"spec": str(self), "mlp_hidden": self.hidden}


def test_a_shape_changing_transform_applies_before_the_weights_load(tmp_path):
    spec = tiny_spec(prune="mlpwidth:32")
    narrow, _, facts = build_model(spec)
    assert narrow.blocks[0].mlp.fc1.weight.shape == (32, 192) and facts["mlp_hidden"] == 32
    ckpt = tmp_path / "narrow.pth"
    torch.save(narrow.state_dict(), ckpt)  # e.g. what its fine-tune saved
    reloaded, recorded, _ = build_model(ModelSpec(**{**spec.to_dict(), "checkpoint": str(ckpt)}))
    assert torch.equal(reloaded.blocks[1].mlp.fc2.weight, narrow.blocks[1].mlp.fc2.weight)
    assert recorded.checkpoint_sha256 and recorded.prune == "mlpwidth:32"
    composed, _, _ = build_model(ModelSpec(**{**spec.to_dict(), "checkpoint": str(ckpt),
                                              "prune": "mlpwidth:32+tome:2"}))
    assert composed.blocks.plan == [(("tome", 16, 2),), (("tome", 14, 2),)]  # 2 merged in each block
    with pytest.raises(TransformError, match="changes weight shapes"):
        transforms.apply(build_model(tiny_spec())[0], "mlpwidth:32")
