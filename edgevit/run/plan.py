"""What one export resolves once and every later step reads: the :class:`RunPlan` that
:func:`~edgevit.run.export.check_export` builds before any work.

* ``options``: each target's ``Options``, resolved once from the options given (the checks, the
  calibration source, the int8 inputs and the exports all read these);
* ``calibration``: where the int8 targets calibrate (None: none of them needs it);
* ``data``: a :class:`DataReader`, which opens each reader of a data source once (the class check, the
  check images, calibration and validation share it);
* ``runners``: a :class:`RunnerCache`, one runtime per artifact: the one its output check opened in the
  staging folder validates it too;
* ``report``: the report collected once, then written and printed.

The benchmark still loads each artifact itself, on purpose: it measures what loading adds to memory
(the report's peak-MB column) with the benchmark's own thread count, one artifact at a time, so it
cannot be handed a runtime that is already open (:func:`edgevit.run.artifacts.bench_artifacts`).
The plan's runners are closed before it starts, as validation's own were before the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import EMBEDDED, Transformed, check_classes, load_split, open_source
from ..targets import Runner, Target


class DataReader:
    """The labelled images of one run. Each reader (a source's train split, its test split, ...) is
    opened on first use and kept until :meth:`close`: opening reads the whole CIFAR pickle or lists the
    whole ImageFolder tree, once. :meth:`open` has :func:`~edgevit.data.open_source`'s signature: the data
    and calibration functions take it as their ``opener``, for this source or another (``--calib``)."""

    def __init__(self, source: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0):
        self.source = source or EMBEDDED  # no --data: the embedded set (the check images come from it)
        self.val_fraction, self.seed = val_fraction, seed
        self._opened: dict[tuple[str, str], tuple[Any, bool]] = {}

    def open(self, source: str | Path, split: str) -> tuple[Any, bool]:
        """:func:`~edgevit.data.open_source`, once per (source, reader)."""
        key = (str(source), split)
        if key not in self._opened:
            self._opened[key] = open_source(source, split)
        return self._opened[key]

    def split(self, name: str, transform: Callable | None = None, limit: int | None = None) -> Transformed:
        """Split ``name`` of the source with ``transform`` applied (:func:`~edgevit.data.load_split`)."""
        return load_split(self.source, name, transform, self.val_fraction, self.seed, limit, opener=self.open)

    def check_classes(self, split: str, num_classes: int | None) -> None:
        """:func:`~edgevit.data.check_classes` on the reader of ``split``."""
        check_classes(self.source, split, num_classes, opener=self.open)

    def opened(self) -> list[tuple[str, str]]:
        """(source, reader) of every reader opened so far."""
        return list(self._opened)

    def close(self) -> None:
        self._opened.clear()


class RunnerCache:
    """One loaded runtime per artifact directory: handed over by the export that checked it (:meth:`put`)
    or opened on first use (:meth:`get`), reused until :meth:`close`. Every runtime here holds its model in
    memory once loaded (ONNX Runtime's session, OpenVINO's compiled model, a TensorRT engine), so a runner
    opened in an artifact's staging folder still serves once the folder is renamed into place."""

    def __init__(self) -> None:
        self._runners: dict[Path, Runner] = {}

    @staticmethod
    def _key(art_dir: str | Path) -> Path:
        return Path(art_dir).resolve()

    def put(self, art_dir: str | Path, runner: Runner) -> None:
        self._runners[self._key(art_dir)] = runner

    def get(self, art_dir: str | Path, open_runner: Callable[[], Runner]) -> Runner:
        key = self._key(art_dir)
        if key not in self._runners:
            self._runners[key] = open_runner()
        return self._runners[key]

    def __len__(self) -> int:
        return len(self._runners)

    def close(self) -> None:
        """Release every runtime (the last reference to a session frees it)."""
        self._runners.clear()


@dataclass
class RunPlan:
    """One export's resolved options, calibration source, data reader and open runners (module docstring)."""

    targets: list[Target]
    given: dict[str, Any]  # the target options given (ExportOptions.given())
    options: dict[str, Any]  # target name -> its Options, resolved once
    calibration: str | None = None  # where calibration images come from; None: no target needs them
    data: DataReader = field(default_factory=DataReader)
    runners: RunnerCache = field(default_factory=RunnerCache)
    report: dict[str, Any] | None = None  # edgevit.report.report.collect's data, once the run is complete

    def options_of(self, target: Target) -> Any:
        return self.options[target.name]

    def close(self) -> None:
        self.runners.close()
        self.data.close()
