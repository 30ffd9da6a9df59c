"""Progress off a terminal: plain lines at a steady pace, no mid-sentence wraps, whole names in tables;
other libraries' bars and the CUDA_HOME warning silenced."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from edgevit import progress
from edgevit.progress import duration, progress_bar, say, table

LINE = re.compile(r"^epoch 3/20: \d+/20 \(\d+%\) \d+s elapsed(, ~\d+s left)?  loss 0\.5$")


def _lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_plain_lines_at_a_steady_pace(monkeypatch, capsys):
    monkeypatch.setenv("EDGEVIT_PROGRESS", "plain")
    monkeypatch.setenv("EDGEVIT_LOG_EVERY", "0.1")
    t0 = time.monotonic()
    with progress_bar("epoch 3/20", total=20, unit="step") as advance:
        for _ in range(20):
            time.sleep(0.03)
            advance(1, loss=0.5)
    elapsed = time.monotonic() - t0
    lines = _lines(capsys)
    assert all(LINE.match(ln) for ln in lines), lines
    assert lines[-1].startswith("epoch 3/20: 20/20 (100%)")  # the end of a long step is said
    beats = len(lines) - 1
    assert max(2, elapsed / 0.1 / 2 - 1) <= beats <= elapsed / 0.1 + 1, (elapsed, lines)  # never faster


def test_short_steps_and_switches_stay_silent(monkeypatch, capsys):
    monkeypatch.setenv("EDGEVIT_PROGRESS", "plain")
    monkeypatch.setenv("EDGEVIT_LOG_EVERY", "30")
    with progress_bar("timing", total=5) as advance:  # shorter than one interval: no line
        advance(5)
    monkeypatch.setenv("EDGEVIT_LOG_EVERY", "0.02")
    with progress_bar("rank 1", total=0) as advance:  # total 0: nothing (other ranks)
        time.sleep(0.06)
    monkeypatch.setenv("EDGEVIT_PROGRESS", "0")
    with progress_bar("off", total=3) as advance:
        time.sleep(0.06)
        advance(3)
    assert _lines(capsys) == []


def test_heartbeat_of_a_step_without_steps(monkeypatch, capsys):
    monkeypatch.setenv("EDGEVIT_PROGRESS", "plain")
    monkeypatch.setenv("EDGEVIT_LOG_EVERY", "0.05")
    with progress.heartbeat("int8 calibration"):
        time.sleep(0.18)
    lines = _lines(capsys)
    assert len(lines) >= 2 and all(re.fullmatch(r"int8 calibration: \d+s elapsed", ln) for ln in lines), lines


def test_not_a_terminal_by_default(monkeypatch):
    monkeypatch.delenv("EDGEVIT_PROGRESS", raising=False)
    assert progress._mode() == "plain"  # pytest's stderr is not a TTY
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(3720) == "1h02m"


def test_long_message_is_not_wrapped_off_a_terminal(capsys):
    msg = ("calibration: 300 images from digits (built cd9c51aa1492eeb1659f), a sentence long enough "
           "that a console 80 columns wide would have broken it in the middle")
    assert len(msg) > 140
    buf = io.StringIO()
    progress._for_logs(Console(file=buf)).print(msg)
    assert buf.getvalue() == msg + "\n"
    say(msg)  # the module's own console (made while stderr was not a terminal)
    assert capsys.readouterr().err == msg + "\n"


def test_table_keeps_long_names():
    name = "pytorch-gpu-fp16-compile-vit_small_patch16_224.augreg_in21k_ft_in1k"
    t = table("row", "precision", "note", title="bench")
    t.add_row(name, "fp16", "a note " * 20)
    wide = io.StringIO()
    progress._for_logs(Console(file=wide)).print(t)  # off a terminal: one line per row
    assert name in wide.getvalue() and "…" not in wide.getvalue()
    narrow = io.StringIO()
    Console(file=narrow, width=50, force_terminal=True, color_system=None).print(t)  # a small terminal
    assert "…" not in narrow.getvalue()
    assert "".join(re.findall(r"│ (\S+?)\s*│", narrow.getvalue())).startswith(name)  # folded, not cut


QUIET = """
import logging, sys
{pre}
from edgevit.quiet import silence_third_party
silence_third_party()
logging.basicConfig(stream=sys.stdout)
logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr")
from rich.progress import Progress
with Progress() as p:  # NNCF's bars: a rich Progress on rich's global console
    t = p.add_task("Statistics collection", total=3)
    for _ in range(3):
        p.advance(t)
from tqdm import tqdm
for _ in tqdm(range(3), desc="Running MIL default pipeline"):  # coremltools' bars
    pass
print("done")
"""


def test_third_party_bars_and_cuda_home_warning_are_silenced():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    for pre in ("", "import tqdm"):  # tqdm imported before the call, or after
        p = subprocess.run([sys.executable, "-c", QUIET.format(pre=pre)], check=False, capture_output=True,
                           text=True, timeout=60, env=env, cwd=Path(progress.__file__).resolve().parents[1])
        assert p.returncode == 0, p.stderr
        assert p.stdout == "done\n" and p.stderr == "", (p.stdout, p.stderr)
