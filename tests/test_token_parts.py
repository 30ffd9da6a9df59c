"""The token transforms on their one seam (edgevit.transforms.tokens.TokenPart): outputs identical to the
implementation before it (logits saved from it), one EViT ranking per block, the composed order within a
block, and the same default search space."""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

import pytest
import torch

from edgevit.models import ModelSpec
from edgevit.run.search import default_space, scale_prune
from edgevit.transforms import build_model

REFERENCE = json.loads((Path(__file__).parent / "token_logits_reference.json").read_text())["outputs"]


def reference_model(name: str, prune: str):
    torch.manual_seed(0)
    model, _, facts = build_model(ModelSpec(name, num_classes=10, img_size=32, patch_size=4, extra={"depth": 4},
                                            pretrained=False, prune=prune))
    return model.eval(), facts


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_outputs_match_the_implementation_before_the_seam(key):
    name, prune = key.split("|")
    model, facts = reference_model(name, prune)
    want = REFERENCE[key]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = model(x)
    assert torch.allclose(got, torch.tensor(want["logits"]), atol=1e-5, rtol=0)
    assert (facts["spec"], facts["method"], facts["tokens_per_block"]) == (want["spec"], want["method"],
                                                                           want["tokens_per_block"])


def test_state_dict_keys_are_the_dense_models():
    dense, _ = reference_model("deit_tiny", None)
    pruned, _ = reference_model("deit_tiny", "evit:0.7@1+tome:2")
    assert list(pruned.state_dict()) == list(dense.state_dict())


def test_pruning_runs_before_merging_in_a_block_whatever_the_spec_order():
    model, _ = reference_model("deit_tiny", "tome:2+evit:0.7@1")
    assert list(model.blocks.parts) == ["tome", "evit"]  # spec order, as describe records it
    # block 1: 62 tokens in; EViT keeps ceil(0.7 * 62) = 44 and fuses 17 into one (45), then ToMe merges 2
    assert model.blocks.plan[:2] == [(("tome", 64, 2),), (("evit", 62, 17), ("tome", 45, 2))]
    assert model.blocks.needs[1] == {"cls_attn", "metric"} and model.blocks.needs[0] == {"metric"}


def test_one_ranking_per_pruning_block():
    """EViT + ToMe in one block: one TopK ranks x, the ToMe metric and the token sizes (three before)
    and ToMe's argsort is the other; blocks 0, 2 and 3 merge only (one TopK each)."""
    import onnx

    model, _ = reference_model("deit_tiny", "evit:0.7@1+tome:2")
    f = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), f, dynamo=False, opset_version=17)
    ops = collections.Counter(n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node)
    assert ops["TopK"] == 2 + 3


SPACE_BEFORE = {  # default_space(depth, n_tokens) before the seam, where it named EViT and ToMe
    (12, 196): [None, "evit:0.7@3,6,9", "evit:0.7@2,5,8", "evit:0.7@1,4,7", "evit:0.5@3,6,9", "evit:0.5@2,5,8",
                "evit:0.5@1,4,7", "evit:0.4@3,6,9", "evit:0.4@2,5,8", "evit:0.4@1,4,7", "tome:8", "tome:13",
                "evit:0.7@3,6,9+tome:5", "evit:0.5@3,6,9+tome:3"],
    (12, 64): [None, "evit:0.7@3,6,9", "evit:0.7@2,5,8", "evit:0.7@1,4,7", "evit:0.5@3,6,9", "evit:0.5@2,5,8",
               "evit:0.5@1,4,7", "evit:0.4@3,6,9", "evit:0.4@2,5,8", "evit:0.4@1,4,7", "tome:3", "tome:4",
               "evit:0.7@3,6,9+tome:2", "evit:0.5@3,6,9+tome:1"],
    (4, 64): [None, "evit:0.7@1,2,3", "evit:0.5@1,2,3", "evit:0.4@1,2,3", "tome:3", "tome:4",
              "evit:0.7@1,2,3+tome:2", "evit:0.5@1,2,3+tome:1"],
    (6, 49): [None, "evit:0.7@1,3,4", "evit:0.5@1,3,4", "evit:0.4@1,3,4", "tome:2", "tome:3",
              "evit:0.7@1,3,4+tome:1", "evit:0.5@1,3,4+tome:1"],
    (3, 16): [None, "tome:1", "evit:0.7@0,1,2+tome:1", "evit:0.5@0,1,2+tome:1"],
    (2, 4): [None, "tome:1", "evit:0.7@0,1,1+tome:1", "evit:0.5@0,1,1+tome:1"],
}


@pytest.mark.parametrize("depth,n_tokens", sorted(SPACE_BEFORE))
def test_default_space_is_the_same_list(depth, n_tokens):
    assert default_space(depth, n_tokens) == SPACE_BEFORE[(depth, n_tokens)]


def test_scaling_is_each_transforms():
    assert scale_prune("evit:0.50@1+tome:4", 64, 196) == "evit:0.50@1+tome:12"  # EViT's text kept as written
    assert scale_prune("tome:4+evit:0.7", 64, 16) == "tome:1+evit:0.7"
    assert scale_prune("tome:4", 64, 64) == "tome:4" and scale_prune(None, 64, 196) is None
