"""Fetching weight files over HTTP (or ``file://``) for ``imagenet`` and
``standin``: a deadline on the whole opening (no DNS hang), streaming to a
temporary file next to the destination, a hash check, then an atomic rename;
nothing is left behind on failure. Testable against a loopback server
(tests/test_weights.py).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ecgpaper.errors import UserError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHUNK = 1 << 20
FILE_MODE = 0o644  # as a plain download would get it (mkstemp makes 0600)
_USER_AGENT = "ecgpaper-weights (python-urllib)"


class WeightsUnreachable(UserError):
    """A weights file could not be fetched: no network, server down or slow
    beyond the timeout, or the file is not on the server."""

    def __init__(self, message: str, *, url: str = "", reason: str = ""):
        super().__init__(message)
        self.url, self.reason = url, reason


def _unreachable(url: str, exc: BaseException) -> WeightsUnreachable:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = str(exc) or type(exc).__name__
    return WeightsUnreachable(f"cannot fetch {url} ({reason})", url=url, reason=reason)


_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def _urlopen(url: str, timeout: float, headers: dict | None = None):
    """``urllib.request.urlopen`` with a deadline on the whole opening.

    urllib's ``timeout`` bounds each socket operation (connect, every read) but
    not the name lookup, which can hang for long on a machine without DNS, so
    the opening runs in a helper thread that is abandoned after ``timeout``.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})
    box: dict = {}
    lock = threading.Lock()

    def opener() -> None:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
            return
        with lock:
            if box.get("abandoned"):
                response.close()
            else:
                box["response"] = response

    thread = threading.Thread(target=opener, name="ecgpaper-urlopen", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "response" in box:
            return box["response"]
        if "error" not in box:
            box["abandoned"] = True
            raise WeightsUnreachable(f"cannot fetch {url} (no answer within {timeout:g} s)",
                                     url=url, reason=f"no answer within {timeout:g} s")
    exc = box["error"]
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
    if isinstance(exc, ValueError):  # "unknown url type" and the like
        raise UserError(f"{url!r} is not a URL urllib can fetch ({exc}); give an http(s):// "
                        "or file:// URL") from None
    if isinstance(exc, _NETWORK_ERRORS):
        raise _unreachable(url, exc) from None
    raise exc


def fetch_bytes(url: str, timeout: float, headers: dict | None = None) -> bytes:
    """A small document (an index page) in memory."""
    response = _urlopen(url, timeout, headers)
    try:
        with response:
            return response.read()
    except _NETWORK_ERRORS as exc:
        raise _unreachable(url, exc) from None


def temp_file_next_to(dest: Path) -> tuple[int, Path]:
    """A new temporary file in ``dest``'s folder (so the final rename is atomic)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise UserError(f"cannot write to {dest.parent} ({exc}); set KERAS_HOME to a writable "
                        "folder before starting Python") from None
    return fd, Path(name)


def download_file(url: str, dest: Path, *, timeout: float, algorithm: str, expected: str | None,
              log: Callable[..., object], what: str, hint: str, check_hdf5: bool = False) -> str:
    """Stream ``url`` to a temporary file next to ``dest``, check its ``algorithm``
    digest against ``expected`` (when given), then rename it to ``dest``
    atomically; nothing is left behind on failure. Returns the hex digest.
    ``hint`` ends the error messages: where else the file can come from."""
    fd, tmp = temp_file_next_to(dest)
    digest = hashlib.new(algorithm)
    received = 0
    start = time.perf_counter()
    out = os.fdopen(fd, "wb")
    try:
        response = _urlopen(url, timeout)
        size = response.headers.get("Content-Length") if response.headers else None
        size = int(size) if size and size.isdigit() else None
        log(f"downloading {what}: {url}" + (f" ({size / 1e6:.1f} MB)" if size else "")
            + f" -> {dest}")
        with response, out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except _NETWORK_ERRORS as exc:
                    raise _unreachable(url, exc) from None
                if not chunk:
                    break
                if received == 0 and check_hdf5 and not chunk.startswith(_HDF5_SIGNATURE):
                    raise UserError(
                        f"{url} did not send an HDF5 weights file (it starts with "
                        f"{chunk[:16]!r}: an error or login page?); {hint}")
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if size is not None and received != size:
            raise WeightsUnreachable(
                f"cannot fetch {url} (connection ended after {received} of {size} bytes); "
                "try again", url=url, reason="incomplete download")
        actual = digest.hexdigest()
        if expected and actual != expected:
            raise UserError(
                f"{url} is not the expected file: {algorithm} {actual}, expected {expected}; "
                f"nothing was kept. {hint}")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    log(f"  {received / 1e6:.1f} MB in {seconds:.1f} s, "
        + (f"{algorithm} verified" if expected
           else f"{algorithm} {digest.hexdigest()} (no hash to check)")
        + f" -> {dest}")
    return digest.hexdigest()
