"""Run directories, manifests and atomic writes: nothing half-written is ever left in place."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import RunDirError

LIBRARIES = ("edgevit", "torch", "timm", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "numpy")
RUN_MANIFEST = "run.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("edgevit", "__main__.py")):
        argv[0] = "edgevit"
    return " ".join(shlex.quote(a) for a in argv)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from other users
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds.

    An exception, Ctrl-C included, removes the temporary folder, so ``final`` is either absent
    or complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run directory's run.json; RunDirError when the folder is not a run."""
    path = Path(run_dir) / RUN_MANIFEST
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not an edgevit run directory (no {RUN_MANIFEST})",
                          "pass the --out folder of `edgevit export` or `edgevit run`")
    return json.loads(path.read_text())


def create_run_dir(path: Path, exist_ok: bool) -> bool:
    """Make the run directory; refuse an existing one unless ``exist_ok``. True if it was made now."""
    path = Path(path)
    if path.exists():
        if not exist_ok:
            raise RunDirError(f"output directory {path} already exists",
                              "pass --exist-ok to write into it, or choose another --out")
        if not path.is_dir():
            raise RunDirError(f"output path {path} exists and is not a directory", "choose another --out")
        return False
    path.mkdir(parents=True)
    return True


def remove_if_empty_run(path: Path) -> None:
    """After a failure: drop a run directory this call created if no artifact was completed."""
    for sub in ("artifacts", "checkpoints"):  # completed artifacts and training progress are kept
        d = path / sub
        if d.is_dir() and any(not p.name.startswith(".") for p in d.iterdir()):
            return
    shutil.rmtree(path, ignore_errors=True)
