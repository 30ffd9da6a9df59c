"""Keep other libraries' progress bars and a noisy PyTorch warning out of edgevit's output.

edgevit reports its own progress (``edgevit.progress``); the bars NNCF and coremltools draw
around their work and the warning PyTorch logs about ``CUDA_HOME`` on a machine without CUDA only
add noise, and off a terminal they land in the logs as stray lines.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import warnings

_CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
_done = False


class _DropCudaHome(logging.Filter):
    """Drops torch.utils.cpp_extension's "No CUDA runtime is found, using CUDA_HOME='...'"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CUDA_HOME" not in record.getMessage()


def _silence_tqdm() -> None:
    # tqdm (>= 4.66) reads TQDM_<ARG> environment variables when tqdm.std is first imported, so
    # TQDM_DISABLE=1 turns off every bar coremltools draws ("Running MIL ... pipeline", ...).
    os.environ.setdefault("TQDM_DISABLE", "1")
    std = sys.modules.get("tqdm.std")
    if std is not None and os.environ["TQDM_DISABLE"] == "1":
        # Imported already: apply the same default the variable would have given (what tqdm's
        # own envwrap does). An explicit disable=... from a caller still wins.
        std.tqdm.__init__ = functools.partialmethod(std.tqdm.__init__, disable=True)


def _silence_nncf() -> None:
    # NNCF has no switch for its progress bars: nncf.common.logging.track_progress.track builds a
    # rich Progress with console=None, i.e. it draws on rich's global console. A quiet global
    # console (rich's public reconfigure) silences them without importing NNCF (5 s). edgevit
    # itself never prints through rich's global console: it uses the consoles of edgevit.progress.
    import rich

    rich.reconfigure(quiet=True)


def _silence_cuda_home() -> None:
    # torch.utils.cpp_extension logs the warning (logging, not warnings) when it is imported, e.g.
    # by NNCF's torch backend; the filter sits on that logger before the import. cuda-pathfinder
    # warns (warnings) when CUDA_PATH and CUDA_HOME differ.
    logging.getLogger(_CPP_EXTENSION_LOGGER).addFilter(_DropCudaHome())
    warnings.filterwarnings("ignore", message=r".*CUDA_HOME")


def silence_third_party() -> None:
    """Call once at CLI start, before NNCF, coremltools or torch.utils.cpp_extension are imported."""
    global _done
    if _done:
        return
    _done = True
    _silence_tqdm()
    _silence_nncf()
    _silence_cuda_home()
