"""NNCF's C++ quantizer kernels, built once with a limit that does not depend on machine speed.

NNCF's PyTorch fake-quantizers call a C++ extension (``quantized_functions_cpu``, and
``quantized_functions_cuda`` when training on a GPU) that ``torch.utils.cpp_extension.load``
compiles on first use into ``<torch_extensions>/nncf/<name>/<torch version>/``. NNCF waits for that
first load for ``NNCF_EXTENSION_LOAD_TIMEOUT`` seconds (default 60) and then raises
``ExtensionLoaderTimeoutException``; the build takes about 2 minutes on a busy 2-core machine, so a
first QAT run (and the test suite) failed there. :func:`ensure_nncf_extensions` loads the kernels
up front through NNCF's own lazy loader with that variable raised to ``EDGEVIT_NNCF_BUILD_TIMEOUT``
(default 30 min, 0 = no limit), so every later call in the process finds them loaded.

A CPU build that fails outright (no C++ compiler) is not an error: NNCF then falls back on its
torch-native reference kernels (slower QAT), and this module says so.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeVitError
from ..progress import heartbeat
from ..progress import say as progress_say

ENV_TIMEOUT = "EDGEVIT_NNCF_BUILD_TIMEOUT"
NNCF_ENV_TIMEOUT = "NNCF_EXTENSION_LOAD_TIMEOUT"  # read by nncf.torch.extensions.ExtensionNamespace.get
DEFAULT_TIMEOUT = 1800
STALE_GRACE_S = 120  # an unheld lock file younger than this may belong to a build that is just starting


class ExtensionBuildError(EdgeVitError):
    """NNCF's C++ quantizer extension could not be built or loaded."""


@dataclass
class Extension:
    """One NNCF kernel extension: what to load and where it builds."""

    kind: str  # "cpu" or "cuda"
    namespace: Any  # nncf ExtensionNamespace (lazy loader with NNCF's timeout)
    name: str
    build_dir: Path
    sources: tuple[str, ...] = ()


def build_timeout(env: Mapping[str, str] = os.environ) -> int | None:
    """Seconds the first build may take: ``EDGEVIT_NNCF_BUILD_TIMEOUT``, else a user-set
    ``NNCF_EXTENSION_LOAD_TIMEOUT``, else 30 min. ``None`` (from 0 or less) means no limit."""
    name = ENV_TIMEOUT if env.get(ENV_TIMEOUT, "").strip() else NNCF_ENV_TIMEOUT
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = int(float(raw))
    except ValueError:
        raise ExtensionBuildError(f"{name}={raw!r} is not a number of seconds",
                                  f"set {ENV_TIMEOUT} to whole seconds, e.g. 3600 (0 = no limit)") from None
    return value if value > 0 else None


def lock_is_stale(lock: Path, timeout: int | None, busy: bool, now: float | None = None) -> bool:
    """For torch's older ``FileBaton`` lock (a plain file whose existence blocks every later build):
    stale when older than the build limit, or when no process works in the build folder and the lock
    is past a short grace period (its build was killed)."""
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if timeout is not None and age > timeout:
        return True
    return age > STALE_GRACE_S and not busy


def build_dir_busy(build_dir: Path) -> bool:
    """Whether a live process (ninja, the compiler) works in ``build_dir``; Linux /proc only, so
    False where it cannot tell (the age rule of :func:`lock_is_stale` still applies there)."""
    target = str(build_dir.resolve())
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for pid in proc.iterdir():
        if not pid.name.isdigit() or pid.name == str(os.getpid()):
            continue
        with contextlib.suppress(OSError):
            if os.readlink(pid / "cwd") == target:
                return True
        with contextlib.suppress(OSError):
            if target.encode() in (pid / "cmdline").read_bytes():
                return True
    return False


def lock_style() -> str:
    """``"flock"`` when torch holds an OS lock (released by the kernel when its holder dies, so a
    leftover file is harmless), ``"baton"`` for torch's older plain lock file."""
    import torch.utils.cpp_extension as cpp_ext

    return "baton" if hasattr(cpp_ext, "FileBaton") else "flock"


def lock_held(lock: Path) -> bool:
    """Whether another process (or thread) holds torch's OS-level build lock right now."""
    import filelock

    probe = filelock.FileLock(str(lock), timeout=0)
    try:
        probe.acquire()
    except filelock.Timeout:
        return True
    probe.release()
    return False


def check_lock(ext: Extension, timeout: int | None, say: Callable[[str], Any], style: str | None = None) -> str:
    """Deal with a lock file left in the build folder; returns what was found (for the facts)."""
    lock = ext.build_dir / "lock"
    if not lock.exists():
        return "none"
    if (style or lock_style()) == "flock":
        if not lock_held(lock):
            return wait_for_orphans(ext, timeout, say) or "left over, not held (harmless)"
    elif lock_is_stale(lock, timeout, build_dir_busy(ext.build_dir)):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        say(f"removed a stale lock left by a killed NNCF extension build: {lock}")
        return "stale, removed"
    say(f"another process is building NNCF's {ext.kind.upper()} extension; waiting for it (lock {lock})")
    return "held by another build"


def wait_for_orphans(ext: Extension, timeout: int | None, say: Callable[[str], Any], poll: float = 2.0) -> str | None:
    """A build whose Python process was killed leaves ninja and the compiler running, unlocked, in
    the folder; a new build there would race them for the same object files. Wait until they end."""
    if not build_dir_busy(ext.build_dir):
        return None
    say(f"a killed earlier build of NNCF's {ext.kind.upper()} extension is still compiling in {ext.build_dir}; "
        "waiting for it to finish")
    deadline = None if timeout is None else time.monotonic() + timeout
    while build_dir_busy(ext.build_dir):
        if deadline is not None and time.monotonic() > deadline:
            raise ExtensionBuildError(
                f"processes of an earlier NNCF extension build still run in {ext.build_dir} after {timeout} s",
                f"end them (ps -ef | grep ninja) or raise {ENV_TIMEOUT}, then rerun")
        time.sleep(poll)
    return "left over by a killed build, waited for its compiler"


def is_built(ext: Extension) -> bool:
    """Whether the compiled library is already in the build folder and newer than its sources."""
    libs = [p for p in ext.build_dir.glob(f"{ext.name}*") if p.suffix in (".so", ".pyd", ".dylib")]
    if not libs:
        return False
    newest_src = max((os.path.getmtime(s) for s in ext.sources if os.path.exists(s)), default=0.0)
    return max(p.stat().st_mtime for p in libs) >= newest_src


def nncf_extensions() -> list[Extension]:
    """The kernel extensions QAT calls: CPU always (the export runs there), CUDA when fine-tuning on a GPU."""
    import torch

    # NNCF has no public "load with this limit" call (``nncf.torch.force_build_cpu_extensions`` builds
    # without any limit and leaves the lazy namespace unloaded), so this one function reads the lazy
    # namespaces its quantizers call, their loaders (build folder) and source lists (names stable
    # since nncf 2.7).
    from nncf.torch.quantization import extensions as qext

    specs = [("cpu", "QuantizedFunctionsCPU", "QuantizedFunctionsCPULoader", "CPU_EXT_SRC_LIST")]
    if torch.cuda.is_available():
        specs.append(("cuda", "QuantizedFunctionsCUDA", "QuantizedFunctionsCUDALoader", "CUDA_EXT_SRC_LIST"))
    exts = []
    for kind, ns, loader, srcs in specs:
        loader_cls = getattr(qext, loader)
        try:
            build_dir = Path(loader_cls.get_build_dir())  # creates the folder
        except OSError as e:
            raise ExtensionBuildError(f"cannot create NNCF's extension build folder: {e}",
                                      "set TORCH_EXTENSIONS_DIR to a writable folder") from e
        exts.append(Extension(kind, getattr(qext, ns), loader_cls.name(), build_dir,
                              tuple(str(s) for s in getattr(qext, srcs, ()))))
    return exts


@contextlib.contextmanager
def _nncf_timeout(timeout: int | None):
    """NNCF's own limit on the first load, raised for the duration of the block."""
    old = os.environ.get(NNCF_ENV_TIMEOUT)
    os.environ[NNCF_ENV_TIMEOUT] = str(timeout or 0)  # NNCF: 0 = no limit
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(NNCF_ENV_TIMEOUT, None)
        else:
            os.environ[NNCF_ENV_TIMEOUT] = old


def _failure(ext: Extension, timeout: int | None, err: Exception) -> ExtensionBuildError:
    from nncf.torch.extensions import ExtensionLoaderTimeoutException

    where = f"NNCF's {ext.kind.upper()} quantizer extension (build folder {ext.build_dir})"
    if isinstance(err, ExtensionLoaderTimeoutException):
        return ExtensionBuildError(
            f"{where} did not build within {timeout} s",
            f"rerun with a longer limit, e.g. {ENV_TIMEOUT}=3600 (0 = no limit); the next run waits for or reuses "
            f"this build's compiler output; if it keeps failing, remove the folder: rm -rf {ext.build_dir}")
    fix = (f"remove the folder (rm -rf {ext.build_dir}) and rerun; the first build needs a C++ compiler (g++/clang)"
           + (" and the CUDA toolkit's nvcc on PATH (or fine-tune on the CPU: CUDA_VISIBLE_DEVICES=)"
              if ext.kind == "cuda" else ""))
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ExtensionBuildError(f"{where} failed to load: {reason}", fix)


def _load(ext: Extension, timeout: int | None, say: Callable[[str], Any]) -> dict[str, Any]:
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    fresh = not is_built(ext)
    lock = check_lock(ext, timeout, say)
    if fresh:
        say(f"compiling NNCF's {ext.kind.upper()} C++ extension once (first run only, a few minutes on 2 cores)…")
    start = time.perf_counter()
    try:
        beat = heartbeat(f"NNCF {ext.kind.upper()} extension build") if fresh else contextlib.nullcontext()
        with _nncf_timeout(timeout), beat:
            fn = ext.namespace.get("Quantize_forward")
    except Exception as e:  # every failure: one clean error naming the folder and the fix
        raise _failure(ext, timeout, e) from e
    seconds = round(time.perf_counter() - start, 1)
    reference = fn is getattr(ReferenceQuantizedFunctions, "Quantize_forward", None)
    if reference:
        say(f"NNCF's {ext.kind.upper()} C++ extension did not compile (see NNCF's warning); "
            "QAT uses its slower torch-native kernels")
    return {"kernels": "torch-native reference" if reference else "C++ extension", "build_dir": str(ext.build_dir),
            "built_now": fresh and not reference, "seconds": seconds, "lock": lock}


def ensure_nncf_extensions(say: Callable[[str], Any] = progress_say, extensions: list[Extension] | None = None,
                           env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Build (first run) and load NNCF's quantizer kernels before QAT, with a limit of
    ``EDGEVIT_NNCF_BUILD_TIMEOUT`` seconds; returns facts per extension kind. Raises
    :class:`ExtensionBuildError` naming the build folder and the fix on any failure."""
    timeout = build_timeout(env)
    exts = nncf_extensions() if extensions is None else extensions
    return {ext.kind: _load(ext, timeout, say) for ext in exts}


if __name__ == "__main__":  # python -m edgevit.quant.nncf_ext: pre-build, e.g. in a CI setup step
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)
    try:
        print(ensure_nncf_extensions())
    except EdgeVitError as exc:
        sys.exit(f"error: {exc}")
