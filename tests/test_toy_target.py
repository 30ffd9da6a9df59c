"""A backend added from one file (tests/toy_target.py: a float target and an int8 target with it as its
float twin) is taken by the command line, export, validate, bench, recipes, the report's tables and plot,
`quantize` and `optimize` with no other edit; an option no chosen target honours is an error naming it,
even when given at its default value."""
from __future__ import annotations

import json

import pytest
from conftest import tiny_spec
from typer.testing import CliRunner

from edgevit import api
from edgevit.errors import OptionError, RecipeError
from edgevit.run.export import ExportOptions
from edgevit.run.recipe import load_recipe
from edgevit.targets import register, unregister


@pytest.fixture
def toy():
    import toy_target

    register(toy_target.TOY, toy_target.TOY_INT8)
    yield toy_target.TOY
    unregister("toy")
    unregister("toy-int8")


def cli(*args):
    from edgevit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


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
    for given in ({"toy_note": ""}, {"max_batch": 8}):  # at its default value, still given
        with pytest.raises(OptionError, match=f"--{next(iter(given)).replace('_', '-')} is not honoured by onnx"):
            api.export(tiny_spec(), ExportOptions(targets=["onnx"], out=tmp_path / "r", options=given))
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


def test_toy_int8_in_the_listing_the_flags_and_quantize(toy):
    r = cli("targets")
    assert r.exit_code == 0 and "toy-int8" in r.output and "a toy int8 target for the tests" in r.output
    r = cli("export", "--help")
    assert r.exit_code == 0 and "--toy-note" in r.output and "a note written into the toy artifact" in r.output
    assert "toy-int8" in api.quantize_targets() and "toy-int8" in cli("quantize", "--help").output
    unregister("toy")  # the flags are the table's: a target gone takes its flags along
    assert "--toy-note" not in cli("export", "--help").output
    register(toy)
    assert "--toy-note" in cli("export", "--help").output


def test_toy_int8_through_export_and_the_reports_tables_and_plot(tmp_path, toy, tiny_checkpoint):
    from matplotlib.colors import to_rgba
    from toy_target import TOY_COLOUR

    from edgevit.report.plot import figure
    from edgevit.report.report import collect
    from edgevit.report.sections import int8_slower_warnings

    run = api.export(tiny_spec(checkpoint=str(tiny_checkpoint)), ExportOptions(
        targets=["toy", "toy-int8"], out=tmp_path / "run", data="digits", split="val", validate_limit=40, iters=3,
        warmup=1, options={"toy_note": "twin"}))
    mf = json.loads((run / "artifacts" / "toy-int8" / "manifest.json").read_text())
    assert (mf["precision"], mf["backend"], mf["export"]["form"]) == ("int8", "toyrt", "ort-dynamic")
    md = (run / "report.md").read_text()
    int8_table = md.split("## int8 artifacts", 1)[1].split("##", 1)[0]
    assert "| toy-int8 | ort-dynamic |" in int8_table and "## Toy artifacts" in md
    rows = collect(run)["rows"]
    ax = figure(rows, "t").axes[0]
    assert "Toy Runtime" in [t.get_text() for t in ax.get_legend().get_texts()]
    colours = [tuple(c) for coll in ax.collections for c in coll.get_facecolors()]
    assert colours.count(to_rgba(TOY_COLOUR)) >= 3  # both artifacts and the legend entry, in the toy's colour
    timed = {r["name"]: r for r in rows if "p50_ms" in r}
    timed["toy-int8"].update(p50_ms=2 * timed["toy"]["p50_ms"], cpu={"isa": ["avx2"]})
    [warning] = int8_slower_warnings(list(timed.values()))
    assert "toy-int8 is slower than its float twin toy" in warning and "VNNI" in warning  # isa_sensitive


def test_toy_family_in_optimizes_search_space(tmp_path, toy, tiny_checkpoint):
    from edgevit.run.optimize import OptimizeOptions, run_optimize
    from edgevit.run.search import candidates, family_of
    from edgevit.targets.registry import families

    assert families()["toy"] == ("toy", "toy-int8") and family_of("toy-int8") == "toy"
    assert [c.target for c in candidates([None, "tome:2"], ["toy"], 16, 16)] == ["toy", "toy-int8"] * 2
    o = OptimizeOptions(targets=["toy-int8"], data="digits", out=tmp_path / "opt", max_drop=100.0, space=[None],
                        finetune_epochs=0, max_finetunes=0, calib_size=8, rounds=2, iters=3, warmup=1,
                        export_winners=False, qat_epochs=0)
    summary = run_optimize(tiny_spec(checkpoint=str(tiny_checkpoint)), o)
    rows = json.loads((o.out / "candidates.json").read_text())
    assert {(r["key"], r["int8"]) for r in rows} == {("dense|toy", False), ("dense|toy-int8", True)}
    assert summary["winners"]["toy"] and (o.out / "plot.png").is_file()
    mf = json.loads((o.out / "latency" / "dense" / "artifacts" / "toy-int8" / "manifest.json").read_text())
    assert mf["options"]["per_channel"] is False  # its search_options reached the export
