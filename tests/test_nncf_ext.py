"""NNCF's C++ quantizer extension: first build with edgevit's limit, stale locks, clean errors.

Fast: no compiler runs here except in the ``slow`` test; the loaders are stand-ins that sleep, fail
or return a namespace, driven through NNCF's real lazy loader (and its timeout)."""
from __future__ import annotations

import os
import time
import types
from pathlib import Path

import pytest
import torch

from edgevit.errors import EdgeVitError
from edgevit.quant import nncf_ext
from edgevit.quant.nncf_ext import (
    DEFAULT_TIMEOUT,
    ENV_TIMEOUT,
    NNCF_ENV_TIMEOUT,
    STALE_GRACE_S,
    Extension,
    ExtensionBuildError,
    build_timeout,
    check_lock,
    ensure_nncf_extensions,
    lock_is_stale,
)


@pytest.mark.parametrize("env, expected", [
    ({}, DEFAULT_TIMEOUT), ({ENV_TIMEOUT: "90"}, 90), ({ENV_TIMEOUT: " 2400 "}, 2400), ({ENV_TIMEOUT: "0"}, None),
    ({ENV_TIMEOUT: "-1"}, None), ({ENV_TIMEOUT: ""}, DEFAULT_TIMEOUT),
    ({NNCF_ENV_TIMEOUT: "300"}, 300),  # a user's own NNCF setting is kept ...
    ({NNCF_ENV_TIMEOUT: "60", ENV_TIMEOUT: "1200"}, 1200),  # ... unless edgevit's is set
])
def test_build_timeout_from_env(env, expected):
    assert build_timeout(env) == expected


def test_bad_timeout_names_the_variable():
    with pytest.raises(ExtensionBuildError, match=f"{ENV_TIMEOUT}='soon'") as e:
        build_timeout({ENV_TIMEOUT: "soon"})
    assert isinstance(e.value, EdgeVitError) and "3600" in e.value.fix


def _aged(path: Path, seconds: float) -> Path:
    path.write_text("")
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_stale_lock_rules(tmp_path):
    lock = tmp_path / "lock"
    assert not lock_is_stale(lock, 1800, busy=False)  # no lock at all
    assert not lock_is_stale(_aged(lock, 5), 1800, busy=False)  # a build that is just starting
    assert lock_is_stale(_aged(lock, STALE_GRACE_S + 60), 1800, busy=False)  # its build was killed
    assert not lock_is_stale(lock, 1800, busy=True)  # ninja still works in the folder
    assert lock_is_stale(_aged(lock, 1900), 1800, busy=True)  # older than any build may take
    assert not lock_is_stale(lock, None, busy=True)  # no limit: only a dead build's lock is stale


def _ext(tmp_path: Path, loader=None, kind: str = "cpu") -> Extension:
    from nncf.torch.extensions import ExtensionNamespace

    build_dir = tmp_path / "build"
    build_dir.mkdir(exist_ok=True)
    loader = loader or types.SimpleNamespace(load=lambda: types.SimpleNamespace(Quantize_forward=abs))
    loader.name = lambda: "fake_ext"
    loader.get_build_dir = lambda: str(build_dir)
    return Extension(kind, ExtensionNamespace(loader), "fake_ext", build_dir)


def test_baton_lock_left_by_a_killed_build_is_removed(tmp_path):
    ext, said = _ext(tmp_path), []
    _aged(ext.build_dir / "lock", STALE_GRACE_S + 60)
    assert check_lock(ext, 1800, said.append, style="baton") == "stale, removed"
    assert not (ext.build_dir / "lock").exists() and "stale lock" in said[0]


def test_baton_lock_of_a_running_build_is_kept(tmp_path):
    ext, said = _ext(tmp_path), []
    _aged(ext.build_dir / "lock", 5)
    assert check_lock(ext, 1800, said.append, style="baton") == "held by another build"
    assert (ext.build_dir / "lock").exists() and "waiting" in said[0]


def test_os_lock_file_is_harmless_unless_held(tmp_path):
    import filelock

    ext, said = _ext(tmp_path), []
    assert check_lock(ext, 1800, said.append, style="flock") == "none"
    lock = _aged(ext.build_dir / "lock", 10_000)  # what every finished build leaves behind
    assert check_lock(ext, 1800, said.append, style="flock").startswith("left over") and not said
    with filelock.FileLock(str(lock)):  # another build holds it right now
        assert check_lock(ext, 1800, said.append, style="flock") == "held by another build"
    assert lock.exists() and "waiting" in said[0]


def test_waits_for_the_compiler_of_a_killed_build(tmp_path):
    import subprocess

    ext, said = _ext(tmp_path), []
    _aged(ext.build_dir / "lock", 5)  # not held: its Python process is gone, its compiler is not
    orphan = subprocess.Popen(["sleep", "3"], cwd=ext.build_dir)
    try:
        assert nncf_ext.build_dir_busy(ext.build_dir)
        with pytest.raises(ExtensionBuildError, match="still run in") as e:
            nncf_ext.wait_for_orphans(ext, 1, said.append, poll=0.2)
        assert ENV_TIMEOUT in e.value.fix
        t0 = time.perf_counter()
        assert check_lock(ext, 60, said.append, style="flock").startswith("left over by a killed build")
        assert orphan.poll() is not None and time.perf_counter() - t0 < 10 and "still compiling" in said[-1]
    finally:
        orphan.kill()
        orphan.wait()
    assert not nncf_ext.build_dir_busy(ext.build_dir)


def test_first_build_says_so_once_and_loads_through_nncf(tmp_path, monkeypatch):
    monkeypatch.delenv(NNCF_ENV_TIMEOUT, raising=False)
    ext, said = _ext(tmp_path), []
    facts = ensure_nncf_extensions(said.append, [ext], env={})
    assert facts["cpu"]["kernels"] == "C++ extension" and facts["cpu"]["built_now"]
    assert [s for s in said if "compiling NNCF's CPU C++ extension once" in s] == said and len(said) == 1
    assert NNCF_ENV_TIMEOUT not in os.environ  # NNCF's variable is only raised during the load
    (ext.build_dir / "fake_ext.so").write_bytes(b"")  # built: the next run is silent
    said.clear()
    assert not ensure_nncf_extensions(said.append, [_ext(tmp_path)], env={})["cpu"]["built_now"] and not said


def test_build_over_the_limit_is_a_clean_error(tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv(NNCF_ENV_TIMEOUT, "7")
    finish = threading.Event()  # the "build" outlives the limit, then ends with the test
    ext = _ext(tmp_path, types.SimpleNamespace(load=lambda: finish.wait(30)))
    t0 = time.perf_counter()
    try:
        with pytest.raises(ExtensionBuildError, match="did not build within 1 s") as e:
            ensure_nncf_extensions(lambda s: None, [ext], env={ENV_TIMEOUT: "1"})
    finally:
        finish.set()
    assert time.perf_counter() - t0 < 5  # NNCF's own timeout fired, with edgevit's limit
    assert str(ext.build_dir) in str(e.value) and f"{ENV_TIMEOUT}=3600" in e.value.fix
    assert f"rm -rf {ext.build_dir}" in e.value.fix
    assert os.environ[NNCF_ENV_TIMEOUT] == "7"  # the user's own setting is restored


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_failing_load_is_a_clean_error(tmp_path, kind):
    def load():
        raise RuntimeError("Error building extension 'fake_ext'\nninja: build stopped")

    with pytest.raises(ExtensionBuildError, match="(?m)failed to load: Error building extension 'fake_ext'$") as e:
        ensure_nncf_extensions(lambda s: None, [_ext(tmp_path, types.SimpleNamespace(load=load), kind)], env={})
    assert str(tmp_path / "build") in str(e.value) and "C++ compiler" in e.value.fix
    assert ("nvcc" in e.value.fix) == (kind == "cuda")


def test_no_compiler_falls_back_on_nncf_reference_kernels(tmp_path):
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    said = []
    ext = _ext(tmp_path, types.SimpleNamespace(load=lambda: ReferenceQuantizedFunctions))
    facts = ensure_nncf_extensions(said.append, [ext], env={})
    assert facts["cpu"]["kernels"] == "torch-native reference" and not facts["cpu"]["built_now"]
    assert "slower torch-native kernels" in said[-1]


def test_real_extensions_build_under_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    exts = {e.kind: e for e in nncf_ext.nncf_extensions()}
    cpu = exts["cpu"]
    assert cpu.build_dir == tmp_path / "nncf" / "quantized_functions_cpu" / torch.__version__ and cpu.build_dir.is_dir()
    assert cpu.sources and all(Path(s).is_file() for s in cpu.sources)
    assert ("cuda" in exts) == torch.cuda.is_available()


@pytest.mark.slow
def test_real_first_build_in_a_fresh_folder(tmp_path, monkeypatch):
    """Compiles NNCF's CPU extension for real (minutes on 2 cores) in a fresh folder, in a fresh process."""
    import subprocess
    import sys

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    code = "from edgevit.quant.nncf_ext import ensure_nncf_extensions as e; print(e(print)['cpu'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=3600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compiling NNCF's CPU C++ extension once" in out.stdout and "'C++ extension'" in out.stdout
    assert list((tmp_path / "nncf" / "quantized_functions_cpu").glob("*/quantized_functions_cpu.so"))
