"""A target added from one file (tests/toy_target.py) is taken by export, validate, bench, recipes
and reports with no other edit; an option no chosen target honours is an error naming it."""
from __future__ import annotations

import json

import pytest
from conftest import tiny_spec

from edgevit import api
from edgevit.errors import OptionError, RecipeError
from edgevit.run.export import ExportOptions
from edgevit.run.recipe import load_recipe
from edgevit.targets import unregister


@pytest.fixture
def toy():
    import toy_target

    toy_target.register(toy_target.TOY)
    yield toy_target.TOY
    unregister("toy")


def recipe_text(ckpt, out, note="from the recipe") -> str:
    return (f"model: {{name: deit_tiny, checkpoint: {ckpt}, num_classes: 10, img_size: 32, patch_size: 8, "
            f"extra: {{depth: 2}}}}\n"
            f"data: {{source: digits, split: val, limit: 40}}\n"
            f"targets: [onnx, toy]\n"
            f"options: {{toy_note: {note!r}}}\n"
            f"bench: {{iters: 3, warmup: 1}}\n"
            f"out: {out}\n")


def test_toy_target_through_recipe_export_validate_bench_report(tmp_path, toy, tiny_checkpoint, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(recipe_text(tiny_checkpoint, tmp_path / "run"))
    run = api.run(load_recipe(path))
    art = run / "artifacts" / "toy"
    mf = json.loads((art / "manifest.json").read_text())
    assert mf["options"] == {"toy_note": "from the recipe"} and (art / "note.txt").read_text() == "from the recipe"
    assert mf["check_vs_pytorch"]["top1_agreement_pct"] == 100.0 and "onnxruntime" in mf["versions"]
    val = json.loads((run / "results" / "validate.json").read_text())
    assert val["toy"]["agreement_pct"] == 100.0 and val["toy"]["images"] == 40
    bench = json.loads((run / "results" / "bench.json").read_text())
    assert bench["toy"]["p50_ms"] > 0
    md = (run / "report.md").read_text()
    assert "## Toy artifacts" in md and "from the recipe" in md
    assert "toy artifact at" in capsys.readouterr().err  # its end-of-run notice
    assert api.validate([art], "digits", "val", limit=20)["toy"]["images"] == 20  # the standalone verbs
    assert [r["name"] for r in api.bench([art], iters=2, warmup=1)] == ["pytorch-eager", "toy"]


def test_an_option_no_chosen_target_honours_is_an_error(tmp_path, toy):
    opts = ExportOptions(targets=["onnx"], out=tmp_path / "r", options={"toy_note": "x"})
    with pytest.raises(OptionError) as e:
        api.export(tiny_spec(), opts)
    assert "--toy-note is not honoured by onnx" in e.value.what and "toy" in e.value.fix
    with pytest.raises(OptionError, match="--form is not honoured by openvino-int8"):
        api.export(tiny_spec(), ExportOptions(targets=["openvino-int8"], out=tmp_path / "r",
                                              options={"form": "static"}))
    assert not (tmp_path / "r").exists()


def test_recipe_types_target_options_by_the_table(tmp_path, toy, tiny_checkpoint):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe_text(tiny_checkpoint, tmp_path / "run").replace("options: {toy_note: 'from the recipe'}",
                                                                          "options: {toy_note: 3, toy_nte: x}"))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "'options.toy_note' must be str" in e.value.what and "did you mean 'toy_note'" in e.value.what
    old = tmp_path / "old.yaml"
    old.write_text("quant: {calib_size: 10}\n")
    with pytest.raises(RecipeError, match="section 'quant' is now part of 'options'"):
        load_recipe(old)
