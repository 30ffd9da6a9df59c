"""Is the hub reachable, and offline mode while it is not (timm and open_clip weights)."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, TypeVar

from ..errors import OfflineError, describe

__all__ = ["hub_reachable", "from_hub"]

T = TypeVar("T")


def from_hub(load: Callable[[], T], what: str, fix: str) -> T:
    """``load()`` (a hub download) with huggingface_hub offline while the hub's host does not resolve
    (the local cache at once, not a minute of retries); a failure that looks offline becomes one
    :class:`OfflineError` ("``what``: its cause", ``fix``), any other propagates."""
    unreachable = os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable()
    try:
        with _hub_offline(unreachable):
            return load()
    except Exception as e:  # network errors come in many types (requests, urllib, hf_hub)
        if not (unreachable or os.environ.get("HF_HUB_OFFLINE") == "1" or _looks_offline(e)):
            raise
        raise OfflineError(f"{what}: {describe(e)}", fix) from e


def hub_reachable(timeout: float = 5.0) -> bool:
    """Does the hub's host name resolve? (DNS fails at once on an offline machine.)"""
    import socket
    import threading
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


@contextlib.contextmanager
def _hub_offline(on: bool):
    """Put huggingface_hub in offline mode for the block (it reads HF_HUB_OFFLINE only at import)."""
    if not on:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _looks_offline(e: BaseException) -> bool:
    text = ""
    keys = ("offline", "connection", "resolve", "network", "timed out", "timeout", "localentrynotfound",
            "max retries", "name or service", "unreachable", "cannot find the requested files")
    while e is not None:
        text += f" {type(e).__name__} {e}".lower()
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return any(k in text for k in keys)
