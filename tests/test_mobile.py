"""What every phone/ARM runtime (the ``.[mobile]`` extra's targets) must do, parametrized over the
runtimes: a new one is added to FAMILIES and tested for free. Their own files test what differs
(tests/test_executorch.py, tests/test_litert.py)."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import tiny_spec

from edgevit.errors import TargetError
from edgevit.quant.config import QuantizationError
from edgevit.run.export import ExportOptions, run_export
from edgevit.targets import get_target
from edgevit.transforms import build_model

# runtime -> (its float target, its int8 target, the module its extra installs, the module of its targets)
FAMILIES = {"executorch": ("executorch", "executorch-int8", "executorch", "edgevit.targets.executorch"),
            "litert": ("litert", "litert-int8", "litert_torch", "edgevit.targets.litert")}


def installed(family: str) -> bool:
    return importlib.util.find_spec(FAMILIES[family][2]) is not None


def needs(family: str):
    return pytest.param(family, marks=pytest.mark.skipif(not installed(family), reason=f"{family} is not installed "
                                                         "(pip install -e '.[mobile]' has it)"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_registry_answers(family):
    from edgevit.targets.registry import backends, families, float_twin_of, int8_targets, quantize_targets

    fp32, int8, _, _ = FAMILIES[family]
    assert int8 in int8_targets() and int8 not in quantize_targets()  # not edgevit quantize's (no --max-drop)
    assert float_twin_of(int8) == fp32 and families()[family] == (fp32, int8)
    assert backends()[family][0] and get_target(int8).isa_sensitive and get_target(int8).needs_calibration(None)
    assert get_target(fp32).extra == "mobile" and not get_target(fp32).needs_calibration(None)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_targets_command_lists_them(family):
    from typer.testing import CliRunner

    from edgevit.cli import app

    res = CliRunner().invoke(app, ["targets"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and all(t in res.output for t in FAMILIES[family][:2]) and "XNNPACK" in res.output


@pytest.mark.parametrize("family", list(FAMILIES))
def test_missing_extra_names_it(family, monkeypatch, tmp_path):
    fp32, int8, module, _ = FAMILIES[family]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    for t in (fp32, int8):
        assert "[mobile]" in get_target(t).status()
        with pytest.raises(TargetError, match="mobile") as e:
            get_target(t).check_available()
        assert ".[mobile]" in e.value.fix
    with pytest.raises(TargetError, match="mobile"):
        run_export(tiny_spec(), ExportOptions(targets=[fp32], out=tmp_path / "r", bench=False))
    assert not (tmp_path / "r" / "artifacts").exists()


@pytest.mark.parametrize("family", [needs(f) for f in FAMILIES])
def test_too_small_calibration_is_refused(family, tmp_path):
    _, int8, _, module = FAMILIES[family]
    with pytest.raises(QuantizationError, match="at least 8 images"):
        run_export(tiny_spec(), ExportOptions(targets=[int8], out=tmp_path / "r", data="digits", bench=False,
                                              options=dict(calib_size=4)))
    assert not (tmp_path / "r" / "artifacts").exists()
    with pytest.raises(QuantizationError, match=f"{int8} calibrates on at least 8 images, and the calibration set "
                                                "has 3"):
        importlib.import_module(module).quantize(build_model(tiny_spec())[0].eval(), torch.zeros(1, 3, 32, 32),
                                                 np.zeros((3, 3, 32, 32)))


@pytest.mark.skipif(not all(installed(f) for f in FAMILIES), reason="the mobile extra is not installed")
def test_optimize_searches_both_runtimes(tmp_path):
    """`edgevit optimize --target executorch,litert`: each runtime's float and int8 targets, a winner each."""
    from edgevit.run.optimize import OptimizeOptions, run_optimize

    o = OptimizeOptions(targets=["executorch", "litert"], data="digits", out=tmp_path / "opt", max_drop=100.0,
                        space=[None], finetune_epochs=0, max_finetunes=0, calib_size=8, rounds=2, iters=3, warmup=1,
                        export_winners=False, qat_epochs=0)
    summary = run_optimize(tiny_spec(), o)
    rows = json.loads((o.out / "candidates.json").read_text())
    assert {(r["key"], r["int8"]) for r in rows} == {(f"dense|{t}", t.endswith("int8")) for f in FAMILIES
                                                     for t in FAMILIES[f][:2]}
    assert set(summary["winners"]) == set(FAMILIES)


@pytest.mark.parametrize("family", [needs(f) for f in FAMILIES])
def test_token_merging_exports_and_matches_pytorch(family, tmp_path):
    """ToMe's matching sorts the tokens: as topk (ExecuTorch's runtime has no sort kernel)."""
    fp32 = FAMILIES[family][0]
    run_export(tiny_spec(prune="tome:2"), ExportOptions(targets=[fp32], out=tmp_path / "r", data="digits",
                                                        split="val", validate_limit=20, bench=False))
    mf = json.loads((tmp_path / "r" / "artifacts" / fp32 / "manifest.json").read_text())
    assert mf["prune"]["spec"].startswith("tome") and mf["check_vs_pytorch"]["max_abs_diff"] <= 1e-3
