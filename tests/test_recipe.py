from pathlib import Path

import pytest

from edgevit.errors import RecipeError
from edgevit.run.quickstart import base_recipe as quickstart_recipe
from edgevit.run.recipe import Recipe, load_recipe
from edgevit.targets import TARGETS, get_target

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_names_real_targets(path):
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.targets
    for t in r.targets:
        get_target(t)


def test_quickstart_yaml_is_what_the_command_runs():
    assert load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml") == quickstart_recipe()
    assert quickstart_recipe().targets == [n for n, t in TARGETS.items() if not t.extra]  # .[mobile]'s left out
    assert "executorch" in TARGETS and "executorch" not in quickstart_recipe().targets


def test_unknown_field_names_file_field_and_fix(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  name: deit_tiny\n  img_sise: 32\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(p) in e.value.what and "model.img_sise" in e.value.what and "img_size" in e.value.fix


def test_wrong_type(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epochs: five\n")
    with pytest.raises(RecipeError, match="'train.epochs' must be int"):
        load_recipe(p)


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")


def test_recipe_runs_training_then_export(tmp_path):
    from edgevit.run.recipe import run_recipe

    p = tmp_path / "r.yaml"
    p.write_text(f"""
model: {{name: deit_tiny, pretrained: false, num_classes: 10, img_size: 32, patch_size: 8, extra: {{depth: 1}}}}
data: {{source: digits, split: val, limit: 30}}
train: {{epochs: 1, batch_size: 128}}
targets: [onnx]
bench: {{enabled: false}}
out: {tmp_path / 'run'}
""")
    out = run_recipe(load_recipe(p))
    assert (out / "model" / "weights.safetensors").is_file()
    assert len((out / "model" / "history.jsonl").read_text().splitlines()) == 1
    assert (out / "artifacts" / "onnx" / "manifest.json").is_file() and (out / "report.html").is_file()
