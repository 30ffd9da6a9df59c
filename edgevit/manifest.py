"""Run directories, manifests and atomic writes: nothing half-written is ever left in place."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeVitError, OutputError, RunDirError, describe, os_error_fix

LIBRARIES = ("edgevit", "torch", "timm", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "numpy")
RUN_MANIFEST = "run.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries every run uses, plus ``extra`` (those the run's targets record)."""
    out = {"python": sys.version.split()[0]}
    for lib in dict.fromkeys((*LIBRARIES, *extra)):
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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The one atomic writer: yield a temporary path beside ``path`` to write; it is renamed onto
    ``path`` only if the block succeeds (an error, Ctrl-C included, removes it). Readable by others
    as a normal file would be (mkstemp's 0600 would hide results from other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # again: some writers (safetensors) replace the file with a 0600 one
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (see :func:`atomic_path`)."""
    return write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    run = read_json(path, "run record", "re-run the command that made the run (its artifacts are kept)")
    if not isinstance(run, dict):
        raise RunDirError(f"{path} holds no run record (a JSON {type(run).__name__}, not an object)",
                          "re-run the command that made the run")
    return run


def read_json(path: Path, what: str, fix: str, error: type[EdgeVitError] = RunDirError) -> Any:
    """A JSON file that edgevit wrote; an unreadable or corrupt one raises ``error`` naming the file
    and the fix."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {path} cannot be read ({describe(e)})", fix) from e


def probe_output(path: Path, exist_ok: bool, need_bytes: int = 0) -> None:
    """Can ``path`` become a run directory? Checked before any work, without creating anything:
    every name fits the file system, no part of it is a file, the nearest existing folder is
    writable and (``need_bytes``) has room."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"--out {path}: the name {part[:40]}... is {len(os.fsencode(part))} bytes long",
                              "use names of at most 255 bytes per folder")
    if path.exists():
        if not exist_ok:
            raise RunDirError(f"output directory {path} already exists",
                              "pass --exist-ok to write into it, or choose another --out")
        if not path.is_dir():
            raise RunDirError(f"output path {path} exists and is not a directory", "choose another --out")
    base = path
    while not base.exists():
        if base.is_symlink():
            raise OutputError(f"--out {path}: {base} is a broken symbolic link", "fix the link or choose another --out")
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"--out {path} cannot be created: {base} is a file, not a folder",
                          "choose an --out that is not under a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"--out {path} cannot be created: {base} is not writable", "choose a folder you can write to")
    free = shutil.disk_usage(base).free
    if need_bytes and free < need_bytes:
        raise OutputError(f"--out {path}: {free / 2**20:.0f} MB free on that disk, about {need_bytes / 2**20:.0f} MB "
                          "needed", "free some space, or choose an --out on another disk")


def create_run_dir(path: Path, exist_ok: bool, need_bytes: int = 0) -> Path | None:
    """Make the run directory (probed first: see :func:`probe_output`); refuse an existing one unless
    ``exist_ok``.

    Returns the topmost folder made now (``path`` or a parent it needed), or None if ``path`` existed,
    so that a failed run can remove exactly what it created."""
    path = Path(path)
    probe_output(path, exist_ok, need_bytes)
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise OutputError(f"--out {path} cannot be created ({describe(e)})", os_error_fix(e)) from e
    return top


def remove_if_empty_run(path: Path, top: Path | None = None) -> None:
    """After a failure: drop a run directory this call created if no artifact was completed
    (and the empty parent folders made for it, up to ``top``)."""
    path = Path(path)
    for sub in ("artifacts", "checkpoints"):  # completed artifacts and training progress are kept
        d = path / sub
        if d.is_dir() and any(not p.name.startswith(".") for p in d.iterdir()):
            return
    shutil.rmtree(path, ignore_errors=True)
    if top is not None and top != path and top in path.parents:
        for parent in path.parents:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only empty folders go
            if parent == top:
                break
