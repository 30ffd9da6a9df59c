"""The run report on hand-written run directories (no export): the plot's axes, legend and numbering,
the warnings (chance level, noisy latency, int8 slower than float), drops with their intervals, the
precision a runtime computes in, CoreML's float-layer text and the page's layout."""
from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

from edgevit.report.plot import figure
from edgevit.report.report import collect, headline, write_report

matplotlib.use("Agg")

AVX2 = {"cpu": "Test CPU @ 2.0GHz", "cores": 2, "isa": ["avx2"]}
VNNI = {"cpu": "Test CPU VNNI", "cores": 8, "isa": ["avx2", "avx512f", "avx512_vnni"]}
QUIET = {"p90_over_p50": 1.1, "rounds_p50_ms": [1.0], "round_spread_pct": 1.0, "noisy": False, "why": None}
BENCH = {  # name: (backend, precision, runtime precision, p50, p90)
    "pytorch-eager": ("pytorch", "fp32", "fp32", 92.0, 764.0),
    "onnx": ("onnxruntime", "fp32", "fp32", 20.0, 22.0),
    "onnx-int8": ("onnxruntime", "int8", "int8", 15.0, 16.0),
    "openvino": ("openvino", "fp32", "fp32", 10.0, 11.0),
    "openvino-fp16": ("openvino", "fp16", "fp32", 10.5, 11.5),
    "openvino-int8": ("openvino", "int8", "int8/fp32", 12.0, 13.0),
    "tensorrt-fp16": ("tensorrt", "fp16", "fp16", 2.0, 2.2),
    "tensorrt-int8": ("tensorrt", "int8", "int8", 1.5, 1.7),
    "toy-a": ("onnxruntime", "fp32", "fp32", 30.0, 33.0),
}
TOP1 = {"onnx": 85.0, "onnx-int8": 84.0, "openvino": 85.0, "openvino-fp16": 85.0, "openvino-int8": 83.0,
        "tensorrt-fp16": 85.0, "tensorrt-int8": 84.0, "toy-a": 0.5}


def _val_row(spec: tuple, top1: float, float_top1: float, classes: int) -> dict:
    drop = float_top1 - top1
    return {"data": {"source": "digits", "split": "val", "images": 500, "classes": classes},
            "images": 500, "top1": top1, "top5": 99.0, "float_top1": float_top1, "float_top5": 99.5,
            "top1_drop_pts": drop, "agreement_pct": 100.0 - abs(drop), "only_float_correct": 7,
            "only_artifact_correct": 2, "top1_drop_ci95_pts": [round(drop - 0.8, 3), round(drop + 0.8, 3)],
            "precision": spec[1], "runtime_precision": spec[2]}


def make_run(root: Path, cpu: dict | None = AVX2, float_top1: float = 85.0, classes: int = 10,
             bench: dict | None = None, new_fields: bool = True, top1: dict | None = None) -> Path:
    """A run directory as `edgevit export` leaves it, written by hand: run.json, two CoreML manifests,
    results/validate.json and results/bench.json (with the noise and CPU fields when ``new_fields``)."""
    run = root / "run"
    (run / "results").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "model": {"name": "deit_tiny"}, "data_config": {"input_size": [3, 32, 32]}, "params": 5e6,
        "command": "edgevit export", "created": "2026-01-01T00:00:00+00:00", "data": "digits", "split": "val",
        "versions": {"edgevit": "0"}}))
    for t, prec in (("coreml", "fp16"), ("coreml-int8", "int8")):
        (run / "artifacts" / t).mkdir(parents=True)
        export = {"compute_precision": "fp16", "structure": {"op_total": 120, "int8_weight_ops": 9 if prec == "int8"
                                                             else 0, "inputs": [], "outputs": [], "weights_bytes": 0}}
        if prec == "int8":
            export.update(form="coremltools linear_quantize_weights", weights="int8 symmetric per-channel",
                          activations="fp16 (weight-only int8)")
        (run / "artifacts" / t / "manifest.json").write_text(json.dumps({
            "target": t, "precision": prec, "size_bytes": 2**20, "export": export,
            "check_vs_pytorch": {"skipped": "CoreML runs only on macOS"}}))
    rows, bench = {}, bench or BENCH
    for name, (backend, prec, rt, p50, p90) in bench.items():
        rows[name] = {"backend": backend, "precision": prec, "runtime_precision": rt, "p50_ms": p50, "p90_ms": p90,
                      "p99_ms": p90 * 1.1, "batch": 1, "threads": 2, "speedup_vs_eager": 92.0 / p50}
        if new_fields:
            rows[name].update(noise=dict(QUIET), cpu=cpu)
    (run / "results" / "bench.json").write_text(json.dumps(rows))
    val = {n: _val_row(bench[n], float_top1 - 85.0 + t, float_top1, classes) for n, t in (top1 or TOP1).items()
           if n in rows}
    if not new_fields:
        for v in val.values():
            for k in ("data", "only_float_correct", "only_artifact_correct", "top1_drop_ci95_pts"):
                v.pop(k)
    (run / "results" / "validate.json").write_text(json.dumps(val))
    return run


def _edit(run: Path, name: str, file: str, **fields) -> None:
    path = run / "results" / file
    data = json.loads(path.read_text())
    data[name].update(fields)
    path.write_text(json.dumps(data))


def _md_table(md: str) -> list[dict[str, str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(head):
            break  # the next table (a section)
        out.append(dict(zip(head, cells)))
    return out


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_axes_log_latency_and_clamped_top1(tmp_path):
    fig = figure(collect(make_run(tmp_path))["rows"], "t")
    ax, bx = fig.axes[:2]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_ylim()
    assert lo >= 0.0 and hi <= 100.0  # toy-a sits at 0.5 % top-1: the old padding went below 0
    assert lo == 0.0
    # eager is a reference line, not a point: no scatter point at its 92 ms
    offsets = [tuple(o) for c in ax.collections for o in c.get_offsets()]
    assert offsets and all(x != 92.0 for x, _ in offsets)
    assert any(line.get_label().startswith("PyTorch eager p50") and list(line.get_xdata()) == [92.0, 92.0]
               for line in ax.lines)


def test_bar_axis_clipped_and_clipped_whisker_marked(tmp_path):
    fig = figure(collect(make_run(tmp_path))["rows"], "t")
    bx = fig.axes[1]
    assert bx.get_xlim()[1] == pytest.approx(1.3 * 92.0)  # not stretched to the 764 ms p90
    assert any(t.get_text() == "p90 = 764 ms" for t in bx.texts)
    assert not any(t.get_text().startswith("p90 = ") and "onnx" in t.get_text() for t in bx.texts)
    assert sum(t.get_text().startswith("p90 = ") for t in bx.texts) == 1


def test_legend_every_backend_and_pareto_only_with_its_line(tmp_path):
    fig = figure(collect(make_run(tmp_path))["rows"], "t")
    ax, bx = fig.axes[:2]
    labels = _legend(ax)
    for name in ("TensorRT", "OpenVINO", "ONNX Runtime"):
        assert name in labels and name in _legend(bx)
    pareto = [label for label in labels if "Pareto" in label]
    assert pareto, labels
    for label in pareto:
        line = next(li for li in ax.lines if li.get_label() == label)
        assert len(line.get_xdata()) >= 2  # an entry has a line drawn
    # a front of one point is no line: then no Pareto entry
    one = {"pytorch-eager": BENCH["pytorch-eager"], "onnx": BENCH["onnx"]}
    fig = figure(collect(make_run(tmp_path / "one", bench=one))["rows"], "t")
    assert not [label for label in _legend(fig.axes[0]) if "Pareto" in label]


def test_numbers_in_plot_match_the_table(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    rows = collect(run)["rows"]
    ax = figure(rows, "t").axes[0]
    by_xy = {(r["p50_ms"], r["top1"]): r["name"] for r in rows if "top1" in r and "p50_ms" in r}
    numbers = {int(t.get_text()): by_xy[tuple(t.xy)] for t in ax.texts if t.get_text().isdigit()}
    assert len(numbers) == len(BENCH) - 1  # every artifact but the eager reference has a number
    table = {c["artifact"].split(" (")[0]: c["#"] for c in _md_table((run / "report.md").read_text())}
    assert table["pytorch-eager"] == "ref"
    for no, name in numbers.items():
        assert table[name] == str(no), name
    page = (run / "report.html").read_text()
    assert "<th>#</th>" in page


def test_thirty_points_numbered_apart(tmp_path):
    """33 points, many within a hair of each other: every number is drawn, none on top of another."""
    bench, top1 = dict(BENCH), dict(TOP1)
    for i in range(25):
        bench[f"x{i}"] = ("coreml" if i % 2 else "openvino", "fp32", "fp32", 5.0 + 0.3 * i, 14.0)
        top1[f"x{i}"] = 84.0 + 0.01 * (i % 3)
    rows = collect(make_run(tmp_path, bench=bench, top1=top1))["rows"]
    fig = figure(rows, "t")
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in labels) == list(range(1, len(bench)))
    scale = fig.dpi / 72.0
    spots = [tuple(ax.transData.transform(t.xy) + [t.xyann[0] * scale, t.xyann[1] * scale]) for t in labels]
    crowded = sum(1 for i, a in enumerate(spots) for b in spots[i + 1:]
                  if abs(a[0] - b[0]) < 4 and abs(a[1] - b[1]) < 4)
    assert crowded <= 2, crowded  # the old labels stacked dozens at one spot
    assert "CoreML" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_chance_level_warning(tmp_path):
    run = make_run(tmp_path, float_top1=11.0, classes=10)
    write_report(run)
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "the float model is at chance level" in md and "<p class='warn'>WARNING: the float model is at" in page
    assert "real checkpoint" in md and "chance is 10.00 %" in md
    assert "say nothing about accuracy" in headline(collect(run)["rows"])
    ok = make_run(tmp_path / "ok", float_top1=85.0, classes=10)
    write_report(ok)
    assert "chance level" not in (ok / "report.md").read_text()


def test_coreml_float_layers_never_of_none(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "## int8 artifacts" in md and "coreml-int8" in md
    assert "of None" not in md and "of None" not in (run / "report.html").read_text()
    assert "not recorded for CoreML (9 of 120 ops hold int8 weights)" in md


def test_openvino_fp16_runs_fp32_with_why(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    md = (run / "report.md").read_text()
    row = next(c for c in _md_table(md) if c["artifact"] == "openvino-fp16")
    assert row["precision"] == "fp32 (saved fp16)"
    assert ("openvino-fp16: saved fp16, runs fp32: the CPU plugin computes in fp32 on this CPU (no AVX512_BF16/AMX); "
            "fp16 only halves the file; on a GPU/NPU it runs fp16") in md
    assert "openvino: saved" not in md  # no note where the two agree


def test_noisy_rows_replace_the_headline(tmp_path):
    run = make_run(tmp_path)
    assert headline(collect(run)["rows"]).startswith("Fastest: tensorrt-int8")
    _edit(run, "pytorch-eager", "bench.json", noise={**QUIET, "noisy": True, "p90_over_p50": 8.3,
                                                     "why": "p90 is 8.3x p50: another process took the CPU"})
    text = headline(collect(run)["rows"])
    assert "Fastest" not in text and "×" not in text
    assert "latency was noisy" in text and "pytorch-eager (p50 92.00 ms, p90 764.00 ms" in text
    assert "another process took the CPU" in text
    write_report(run)
    md = (run / "report.md").read_text()
    assert "Fastest:" not in md and "pytorch-eager (noisy)" in md


def test_header_states_the_cpu(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    assert "CPU: Test CPU @ 2.0GHz, 2 cores, AVX2 (no AVX-512, VNNI, BF16 or AMX)" in (run / "report.md").read_text()


def test_int8_slower_than_float_twin_names_vnni(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    md = (run / "report.md").read_text()
    warn = next(line for line in md.splitlines() if "openvino-int8 is slower than its float twin openvino" in line)
    assert "VNNI" in warn and "12.00 vs 10.00 ms" in warn
    assert "onnx-int8 is slower" not in md and "tensorrt-int8 is slower" not in md  # faster than their twins
    vnni = make_run(tmp_path / "vnni", cpu=VNNI)
    write_report(vnni)
    warn = next(line for line in (vnni / "report.md").read_text().splitlines() if "openvino-int8 is slower" in line)
    assert "no VNNI" not in warn and "edgevit inspect" in warn


def test_drops_with_interval_and_discordant_counts(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    md = (run / "report.md").read_text()
    row = next(c for c in _md_table(md) if c["artifact"] == "onnx-int8")
    assert row["drop pts vs float [95% CI]"] == "+1.00 [+0.20, +1.80]"
    assert row["only float / only artifact right"] == "7 / 2"
    assert "drop pts vs dense [95% CI]" not in md
    assert "95 % CI" in headline(collect(run)["rows"])  # the fastest row's drop, with its interval


def test_dense_drop_columns_when_present(tmp_path):
    run = make_run(tmp_path)
    _edit(run, "tensorrt-int8", "validate.json", dense_top1=88.0, top1_drop_vs_dense_pts=4.0,
          top1_drop_vs_dense_ci95_pts=[2.5, 5.5], only_dense_correct=25, only_artifact_correct_vs_dense=5)
    write_report(run)
    md = (run / "report.md").read_text()
    row = next(c for c in _md_table(md) if c["artifact"] == "tensorrt-int8")
    assert row["drop pts vs dense [95% CI]"] == "+4.00 [+2.50, +5.50]"
    assert row["only dense / only artifact right"] == "25 / 5"
    assert row["drop pts vs float [95% CI]"] == "+1.00 [+0.20, +1.80]"
    text = headline(collect(run)["rows"])
    assert "4.00 pts top-1 below the dense (unpruned) model" in text and "export fidelity: 1.00 pts" in text
    assert "what pruning cost" in md


def test_page_scrolls_tables_and_fits_narrow_windows(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    page = (run / "report.html").read_text()
    assert re.search(r"\.scroll\{overflow-x:auto", page) and "name=\"viewport\"" in page
    assert "img{max-width:100%" in page and "max-width:1200px" in page
    assert page.count("<table>") == page.count("<div class='scroll'><table>") >= 2


def test_old_results_still_render(tmp_path):
    run = make_run(tmp_path, new_fields=False)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "CPU: not recorded" in md and "None" not in md
    row = next(c for c in _md_table(md) if c["artifact"] == "onnx-int8")
    assert row["drop pts vs float [95% CI]"] == "+1.00" and row["only float / only artifact right"] == "—"
    assert headline(collect(run)["rows"]).startswith("Fastest: tensorrt-int8")


def test_tensorrt_stand_ins_slower_on_cpu_say_so_not_warn():
    """A TensorRT ONNX timed by ONNX Runtime here (no engine) is not TensorRT's speed: a note, not a warning."""
    from edgevit.report.sections import int8_slower_warnings

    ort = "onnxruntime 1.32.0 (the ONNX TensorRT compiles; engine not run here: TensorRT is not installed)"
    rows = [{"name": "tensorrt-fp16", "p50_ms": 6.5, "runtime": ort},
            {"name": "tensorrt-int8", "p50_ms": 22.7, "runtime": ort, "artifact": "r/artifacts/tensorrt-int8"}]
    [note] = int8_slower_warnings(rows)
    assert not note.startswith("WARNING") and "onnxruntime 1.32.0 on this machine's CPU" in note
    assert "timed on their GPU" in note
    engine = [{**r, "runtime": "tensorrt 10.3.0 (cuda-python)"} for r in rows]
    [warn] = int8_slower_warnings(engine)
    assert warn.startswith("WARNING: tensorrt-int8 is slower than its float twin") and "edgevit inspect" in warn
