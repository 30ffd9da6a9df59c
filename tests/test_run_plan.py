"""One export resolves, opens and reads each thing once: the RunPlan check_export builds (issue 24, item 3).

Counted around one export of a tiny DeiT (32 px) to onnx, onnx-int8, openvino-int8 and tensorrt-int8 (no
TensorRT here: its ONNX runs on ONNX Runtime) with CIFAR-format data, validation and a benchmark:

=====================================================  ======  =====
what                                                   before  after
=====================================================  ======  =====
options resolved (options_for), per target                  5      1
ExportOptions.given()                                       6      1
CIFAR test split opened                                     4      1
CIFAR train split opened (train part, calibration)          2      1
runtime loaded (Target.load), per artifact                  3      2
ONNX Runtime sessions on an artifact's model.onnx           3      2
tensorrt-int8's ONNX read for facts (rules, precision)      3      1
tensorrt-int8's precision map computed                      2      1
report collected                                            2      1
=====================================================  ======  =====

The one second load per artifact is the benchmark's, on purpose: it measures what loading adds to memory
(the report's peak-MB column), one artifact at a time, with its own thread count, so it cannot be handed a
runtime the output check and validation already hold (those are closed before it starts). Without a
benchmark (onnx only, the embedded digits) an artifact loads once (before: twice) and the digits are read
once (before: four times).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import tiny_spec, write_cifar

TARGETS = ["onnx", "onnx-int8", "openvino-int8", "tensorrt-int8"]


def _everywhere(monkeypatch, real, wrapper) -> None:
    """Replace ``real`` by ``wrapper`` in every edgevit module that imported it by name."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("edgevit") and getattr(mod, "__dict__", {}).get(
                real.__name__) is real:
            monkeypatch.setattr(mod, real.__name__, wrapper)


def _artifact_of(path) -> str | None:
    """The target whose artifact (final or staging folder) holds this ONNX file, else None."""
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.parent.parent.name != "artifacts":
        return None
    m = re.fullmatch(r"\.tmp-(.+)-[a-z0-9_]+", p.parent.name)
    return m.group(1) if m else p.parent.name


class Counts:
    def __init__(self):
        self.seen: dict[str, Counter] = {}

    def __getitem__(self, what: str) -> Counter:
        return self.seen.setdefault(what, Counter())


@pytest.fixture
def counts(monkeypatch) -> Counts:
    import onnx
    import onnxruntime as ort

    import edgevit.data.readers as readers
    import edgevit.precision as precision
    import edgevit.report.report as report
    import edgevit.targets.base as base
    from edgevit.run.export import ExportOptions
    from edgevit.targets import TARGETS as TABLE

    c = Counts()

    def counter(owner, name: str, what: str, key=lambda *a, **k: "all", everywhere: bool = True):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            c[what][key(*a, **k)] += 1
            return real(*a, **k)

        wrapper.__name__ = real.__name__
        monkeypatch.setattr(owner, name, wrapper)
        if everywhere:
            _everywhere(monkeypatch, real, wrapper)

    counter(base, "options_for", "options_for", lambda t, given: t.name)
    counter(ExportOptions, "given", "given", everywhere=False)
    counter(precision, "precision_map", "precision_map", lambda path, *a, **k: _artifact_of(path))
    counter(report, "collect", "collect")
    fact_read = lambda path, *a, **k: _artifact_of(path)  # noqa: E731
    counter(onnx, "load", "onnx read", fact_read, everywhere=False)
    monkeypatch.setattr(onnx, "load_model", onnx.load)
    counter(onnx.shape_inference, "infer_shapes_path", "onnx read", fact_read, everywhere=False)

    class Session(ort.InferenceSession):
        def __init__(self, path, *a, **k):
            c["ort session"][_artifact_of(path)] += 1
            super().__init__(path, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    depth: list[int] = []  # TensorRT's load calls ONNX Runtime's: count the outermost call only
    for cls in {type(t) for t in TABLE.values()}:
        if "load" in vars(cls):
            def load(self, art_dir, threads=None, _real=vars(cls)["load"]):
                if not depth:
                    c["load"][self.name] += 1
                depth.append(1)
                try:
                    return _real(self, art_dir, threads)
                finally:
                    depth.pop()
            monkeypatch.setattr(cls, "load", load)
    for cls in (readers.Cifar, readers.ImageFolder, readers.Digits):
        def init(self, *a, _real=cls.__init__, _name=cls.__name__, **k):
            c["opened"][(_name, (a[1:] or [k.get("split", "")])[0])] += 1
            _real(self, *a, **k)
        monkeypatch.setattr(cls, "__init__", init)
    return c


def test_one_export_resolves_opens_and_reads_each_thing_once(tmp_path, tiny_checkpoint, counts):
    from edgevit.run.export import ExportOptions, run_export

    data = write_cifar(tmp_path / "cifar", n_train=60, n_test=30)
    out = run_export(tiny_spec(checkpoint=str(tiny_checkpoint)), ExportOptions(
        targets=TARGETS, out=tmp_path / "run", data=str(data), split="test", warmup=1, iters=2,
        options={"calib_size": 20}))

    assert counts["options_for"] == {t: 1 for t in TARGETS}
    assert counts["given"] == {"all": 1}
    assert counts["opened"] == {("Cifar", "test"): 1, ("Cifar", "train"): 1}
    # one load for the output check and validation, one for the benchmark (it measures loading: see above)
    assert counts["load"] == {t: 2 for t in TARGETS}
    assert {t: n for t, n in counts["ort session"].items() if t} == {"onnx": 2, "onnx-int8": 2, "tensorrt-int8": 2}
    # the shipped int8 ONNX read for facts: tensorrt-int8's once (the rules check and the precision map share
    # it; the load after the export reads the label from the staged manifest); onnx-int8's never
    assert {t: n for t, n in counts["onnx read"].items() if t} == {"tensorrt-int8": 1}
    assert counts["precision_map"] == {"tensorrt-int8": 1}
    assert counts["collect"] == {"all": 1}

    trt = json.loads((out / "artifacts" / "tensorrt-int8" / "manifest.json").read_text())
    assert trt["runtime"]["precision"] == trt["export"]["runtime_precision"] == "int8 GEMMs + fp16"
    assert set(json.loads((out / "results" / "validate.json").read_text())) == set(TARGETS)
    report = json.loads((out / "report.json").read_text())
    assert {r["name"] for r in report["rows"]} == {"pytorch-eager", *TARGETS}


def test_without_a_benchmark_each_artifact_loads_once(tmp_path, counts):
    from edgevit.run.export import ExportOptions, run_export

    run_export(tiny_spec(), ExportOptions(targets=["onnx"], out=tmp_path / "run", data="digits", split="val",
                                          validate_limit=20, bench=False))
    assert counts["load"] == {"onnx": 1}  # the output check's runner validates the artifact
    assert counts["opened"] == {("Digits", ""): 1}
    assert counts["collect"] == {"all": 1}


def test_check_export_returns_the_plan(tmp_path):
    from edgevit.run.export import ExportOptions, check_export
    from edgevit.run.plan import RunPlan

    plan = check_export(tiny_spec(), ExportOptions(targets=["onnx", "onnx-int8"], out=tmp_path / "r",
                                                   data="digits", options={"form": "static", "calib_size": 8}))
    assert isinstance(plan, RunPlan) and [t.name for t in plan.targets] == ["onnx", "onnx-int8"]
    assert plan.options_of(plan.targets[1]).form == "static" and plan.options["onnx-int8"].calib_size == 8
    assert plan.calibration == "digits" and plan.given == {"form": "static", "calib_size": 8}
    assert plan.data.source == "digits" and plan.data.opened() == [] and len(plan.runners) == 0


def test_data_reader_opens_each_reader_once(cifar_dir, counts):
    from edgevit.run.plan import DataReader

    reader = DataReader(str(cifar_dir))
    reader.check_classes("test", 10)
    assert len(reader.split("test", limit=5)) == 5
    assert len(reader.split("test")) == 20
    assert len(reader.split("train")) == 40
    assert counts["opened"] == {("Cifar", "test"): 1, ("Cifar", "train"): 1}
    assert reader.opened() == [(str(cifar_dir), "test"), (str(cifar_dir), "train")]
    reader.close()
    assert reader.opened() == []


def test_runner_cache_opens_lazily_and_closes(tmp_path):
    from edgevit.run.plan import RunnerCache
    from edgevit.targets import Runner

    made: list[int] = []
    cache = RunnerCache()

    def open_one() -> Runner:
        made.append(1)
        return Runner(lambda x: x)

    first = cache.get(tmp_path / "a", open_one)
    assert cache.get(tmp_path / "a" / ".." / "a", open_one) is first and made == [1]
    kept = Runner(lambda x: x)
    cache.put(tmp_path / "b", kept)
    assert cache.get(tmp_path / "b", open_one) is kept and made == [1] and len(cache) == 2
    cache.close()
    assert len(cache) == 0
