"""gunicorn settings hooks (``-c python:ecgweb.gunicorn_conf``, set by ``ecgpaper serve``).

Issue 22, finding 8: gunicorn's ``--timeout`` kills a worker that has not reported
for that long; here it bounds a request (``ECGWEB_REQUEST_TIMEOUT_S``). Loading
TensorFlow and the model as a worker starts takes longer on a slow or busy host, so
while the worker boots a helper process reports for it, up to
``ECGWEB_BOOT_TIMEOUT_S``: the two limits are separate. (A process, not a thread:
TensorFlow's import and graph tracing hold the GIL for seconds at a time.)
"""
from __future__ import annotations

import os
import signal
import time

_heartbeat_pid: int | None = None
_worker = None


def post_fork(server, worker) -> None:
    """In each new worker, before it imports anything heavy: fork a helper that marks
    the worker alive every second until :func:`booted`, the boot limit, or the
    worker's end."""
    global _heartbeat_pid, _worker
    _worker = worker
    limit = float(os.environ.get("ECGWEB_BOOT_TIMEOUT_S", "300"))
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and os.getppid() == parent:
                worker.notify()
                time.sleep(1.0)
        finally:
            os._exit(0)
    _heartbeat_pid = pid


def booted() -> None:
    """The worker has loaded the app (and the model): from now on ``--timeout`` applies."""
    global _heartbeat_pid
    if _heartbeat_pid is not None:
        try:
            os.kill(_heartbeat_pid, signal.SIGKILL)
            os.waitpid(_heartbeat_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        _heartbeat_pid = None
    if _worker is not None:
        _worker.notify()  # the request timeout counts from here
