"""gunicorn settings hooks (``-c python:ecgweb.gunicorn_conf``, set by ``ecgpaper serve``).

Issue 22, finding 8: gunicorn's ``--timeout`` kills a worker that has not reported
for that long; here it bounds a request (``ECGWEB_REQUEST_TIMEOUT_S``). Loading
TensorFlow and the model as a worker starts takes longer on a slow or busy host, so
while the worker boots a helper process reports for it, up to
``ECGWEB_BOOT_TIMEOUT_S``: the two limits are separate. (A process, not a thread:
TensorFlow's import and graph tracing hold the GIL for seconds at a time.)

A worker is replaced after ``ECGWEB_MAX_UPLOADS`` uploads (plus up to 10 % jitter, so
that the workers do not restart together): decoding images and running TensorFlow is
what grows a long-lived worker's memory. gunicorn's own ``--max-requests`` counts every
request, so a flood of cheap ones (429s to a login flood, health checks) made all
workers restart at once and the service stop answering while they loaded TensorFlow
again (``test_a_hashing_flood_from_one_address_leaves_the_health_check_within_its_budget``).
"""
from __future__ import annotations

import os
import random
import signal
import time

#: the WSGI environ key a view sets on a request that decoded an upload (and ran the model)
UPLOAD_MARK = "ecgweb.upload"

_heartbeat_pid: int | None = None
_worker = None
_uploads = 0
_upload_limit = 0  # 0: never replaced


def post_fork(server, worker) -> None:
    """In each new worker, before it imports anything heavy: fork a helper that marks
    the worker alive every second until :func:`booted`, the boot limit, or the
    worker's end."""
    global _heartbeat_pid, _worker, _upload_limit
    _worker = worker
    base = int(os.environ.get("ECGWEB_MAX_UPLOADS", "0") or 0)
    _upload_limit = base + random.randint(0, base // 10) if base > 0 else 0
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


def post_request(worker, req, environ, resp) -> None:
    """After each request: count the uploads; at the limit, finish and be replaced
    (gunicorn starts a new worker, as for its own ``--max-requests``)."""
    global _uploads
    if not environ.get(UPLOAD_MARK):
        return
    _uploads += 1
    if _upload_limit and _uploads >= _upload_limit and worker.alive:
        worker.log.info("Autorestarting worker after current request (%d uploads, ECGWEB_MAX_UPLOADS)",
                        _uploads)
        worker.alive = False
