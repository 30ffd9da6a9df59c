"""A token transform added from one file (tests/toy_transform.py: ``droplast:K[@BLOCK]``) is taken by
``--prune`` on export, ``edgevit prune --spec``, their help, `edgevit optimize`'s help, default search
space and token scaling with no other edit; composed with ToMe, every per-token tensor stays aligned."""
from __future__ import annotations

import json

import pytest
from conftest import tiny_spec
from typer.testing import CliRunner

from edgevit.transforms import register, unregister

TINY = ("--model", "deit_tiny", "--no-pretrained", "--num-classes", "10", "--img-size", "32", "--patch-size", "4")


@pytest.fixture
def droplast():
    import toy_transform

    register(toy_transform.DropLast)
    yield toy_transform.DropLast
    unregister("droplast")


def cli(*args):
    from edgevit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def help_text(*command) -> str:
    r = cli(*command, "--help")
    assert r.exit_code == 0, r.output
    return " ".join(r.output.replace("│", " ").split())  # rich's box and wrapping out


def test_export_takes_it_in_prune_composed_with_tome(tmp_path, droplast):
    r = cli("export", *TINY, "--prune", "droplast:8@6+tome:2", "--target", "onnx", "--no-bench",
            "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    mf = json.loads((tmp_path / "run" / "artifacts" / "onnx" / "manifest.json").read_text())
    assert mf["model"]["prune"] == "droplast:8@6+tome:2" and mf["prune"]["method"] == "droplast+tome"
    # ToMe merges 2 per block; at block 6 the 8 last of 52 tokens go first (pruning before merging)
    assert mf["prune"]["tokens_per_block"] == [62, 60, 58, 56, 54, 52, 42, 40, 38, 36, 34, 32]
    assert mf["check_vs_pytorch"]["top1_agreement_pct"] == 100.0


def test_prune_command_takes_its_spec(tmp_path, droplast):
    r = cli("prune", *TINY, "--spec", "droplast:8", "--target", "onnx", "--no-bench", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"]["prune"] == "droplast:8@6"  # its default block, resolved into the record
    assert "tokens: 64 -> 56 @6 patch tokens after blocks (droplast:8@6)" in " ".join(r.output.split())
    r = cli("prune", *TINY, "--spec", "droplast:64@1", "--target", "onnx", "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "cannot drop 64 of block 1's 64 patch tokens" in " ".join(r.output.split())


def test_help_lists_it_while_it_is_registered(droplast):
    form = "droplast:K[@BLOCK] (e.g. droplast:4@1)"
    assert form in help_text("export") and form in help_text("quantize") and form in help_text("zeroshot")
    prune = help_text("prune")
    assert form in prune and "droplast" in prune.split("the transform:")[1].split("--keep-rate")[0]  # --method
    assert "droplast:24@6" in help_text("optimize")  # its search entry, for a 12-block ViT of 196 tokens
    unregister("droplast")
    assert "droplast" not in help_text("export") + help_text("prune") + help_text("optimize")


def test_optimize_searches_its_entries_and_scales_it(tmp_path, droplast, tiny_checkpoint):
    from edgevit.run.optimize import OptimizeOptions, Search
    from edgevit.run.search import default_space, scale_prune

    space = default_space(12, 196)
    assert len(space) == 15 and space[space.index("tome:13") + 1] == "droplast:24@6"  # after the others' own
    assert scale_prune("droplast:8@6+tome:4", 64, 196) == f"droplast:{round(8 * 196 / 64)}@6+tome:12"
    o = OptimizeOptions(targets=["onnx"], data="digits", out=tmp_path / "opt", space=None, finetune_epochs=0)
    o.check()
    s = Search(tiny_spec(checkpoint=str(tiny_checkpoint)), o)  # 2 blocks, 16 patch tokens
    assert "droplast:2@1" in s.space
    assert [c.key for c in s.cands if c.prune == "droplast:2@1"] == ["droplast:2@1|onnx", "droplast:2@1|onnx-int8"]
