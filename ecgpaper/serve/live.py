"""The web service in a child process: ``ecgpaper.serve.server.serve`` on a free
loopback port, for the serving benchmark (benchmarks/bench_serve.py) and the
web tests (tests/support/server.py adds their conveniences).

:class:`LiveServer` runs ``serve`` (migrate, collectstatic, then gunicorn with
``workers`` workers) in a subprocess. Its project root (``ECGPAPER_ROOT``) holds
its state folder: the SQLite database, uploads, secret key and audit log; given
a PostgreSQL server (anything with ``database_url(name)`` that creates a
database and returns its ``DATABASE_URL``) it gets a database of its own there
instead. ``start()`` returns once ``/api/v1/health/`` answers
(``/api/v1/ready/``, with ``require_model``), ``stop()`` sends SIGTERM; it is
also a context manager. A server that exits or never gets ready raises
:class:`ServerFailed`, whose message ends with the server's log.
:func:`running_instances` starts several on one database, sharing the upload
folder and the secret key, as webapp/README.md deploys them. Loopback only; it
imports neither pytest nor Django (the server runs in its own process with its
own settings).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from ecgpaper import paths

REPO = paths.REPO
MANAGE = REPO / "webapp" / "manage.py"
API = "/api/v1"


class ServerFailed(RuntimeError):
    """The server exited, did not get ready in time, or a management command failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth(token: str | None) -> dict:
    """The header of token authentication (none without a token)."""
    return {"Authorization": f"Token {token}"} if token else {}


def _database_name(folder: Path) -> str:
    return re.sub(r"[^a-z0-9_]", "_", folder.name.lower()).lstrip("0123456789") or "server"


class LiveServer:
    """``ecgpaper.serve.server.serve`` in a subprocess, its project root ``root``.

    ``env`` adds or overrides settings (``ECGWEB_*``); the caller's own
    ``ECGWEB_*``, ``DATABASE_URL`` and ``DJANGO_SETTINGS_MODULE`` are not passed
    on, and ``ECGWEB_SECRET_KEY`` is empty unless given (the server then makes one
    in its state folder, kept across restarts). With ``postgres`` (a started
    server: ``database_url(name)``) the server gets a new database there, named after ``root``.
    """

    def __init__(self, root: Path, env: dict | None = None, workers: int = 1, *,
                 postgres=None, require_model: bool = False, start_timeout: float = 180):
        self.root, self.workers = Path(root), workers
        self.require_model, self.start_timeout = require_model, start_timeout
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("ECGWEB_") and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
        self.env = {**inherited, "ECGPAPER_ROOT": str(self.root), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "ECGWEB_SECRET_KEY": "", **(env or {})}
        if postgres is not None:
            self.env["DATABASE_URL"] = postgres.database_url(_database_name(self.root))
        self.database = "postgres" if self.env.get("DATABASE_URL") else "sqlite"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.url = ""

    @property
    def state(self) -> Path:
        """The state folder: database, uploads, secret key, audit log."""
        return Path(self.env.get("ECGWEB_STATE_DIR") or self.root / "var" / "webapp")

    @property
    def media(self) -> Path:
        """Where the uploads and heat maps are stored."""
        return Path(self.env.get("ECGWEB_MEDIA_ROOT") or self.state / "uploads")

    def start(self) -> LiveServer:
        """Start on a new free port (the log is appended to) and wait until it answers."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = f"from ecgpaper.serve.server import serve; serve('127.0.0.1', {self.port}, {self.workers})"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        path = f"{API}/ready/" if self.require_model else f"{API}/health/"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with {self.proc.returncode}; its log "
                                   f"({self.log}) ends:\n{self._log_without(path)}")
            try:
                if requests.get(self.url + path, timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or the workers still loading
                pass
            time.sleep(0.3)
        raise ServerFailed(f"{path} did not answer 200 within {self.start_timeout:.0f} s; the "
                           f"server's log ({self.log}) ends:\n{self._log_without(path)}")

    def _log_without(self, probe: str, n: int = 4000) -> str:
        """The end of the log without the audit lines of the readiness probes."""
        lines = self.log_tail(10**6).splitlines()
        return "\n".join(line for line in lines if f'path="{probe}"' not in line)[-n:]

    def stop(self) -> None:
        """SIGTERM (gunicorn finishes its requests), SIGKILL after 60 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def manage(self, *args: str, env: dict | None = None, timeout: float = 120) -> str:
        """``webapp/manage.py <args>`` with the server's settings; its output."""
        res = subprocess.run([sys.executable, str(MANAGE), *args], check=False, cwd=REPO, capture_output=True,
                             text=True, timeout=timeout, env={**self.env, **(env or {})})
        if res.returncode != 0:
            raise ServerFailed(f"manage.py {' '.join(args)} failed ({res.returncode}):\n"
                               f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
        return res.stdout

    def create_users(self, users: dict[str, str]) -> dict[str, str]:
        """Ordinary users (``{name: password}``), each with an API token: ``{name: token}``.
        The passwords go to ``manage.py shell`` in its environment, not on its command
        line (which every local user can read)."""
        script = ("import json, os; from django.contrib.auth import get_user_model; "
                  "from rest_framework.authtoken.models import Token; "
                  "print(json.dumps({n: Token.objects.create(user=get_user_model().objects.create_user("
                  "n, password=p)).key for n, p in json.loads(os.environ['LIVESERVER_USERS']).items()}))")
        out = self.manage("shell", "-c", script, env={"LIVESERVER_USERS": json.dumps(users)})
        return json.loads(out.strip().splitlines()[-1])

    def get(self, path: str, token: str | None = None, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=auth(token), timeout=60, **kw)

    def upload(self, data: bytes, token: str | None, name: str = "ecg.jpg",
               query: str = "") -> requests.Response:
        """POST an image to the classifications endpoint (``query``: e.g. ``?explain=0``)."""
        return requests.post(f"{self.url}{API}/classifications/{query}", headers=auth(token),
                             files={"image": (name, data, "application/octet-stream")}, timeout=120)


@contextlib.contextmanager
def running_instances(folder: Path, count: int, env: dict | None = None, *, postgres=None,
                      server_class: type[LiveServer] = LiveServer, **server_options):
    """``count`` servers on one database (one of ``postgres``, else one SQLite file
    in ``folder``), sharing one upload folder and one secret key (webapp/README.md,
    "Several instances"); started one after the other (the first one migrates), all
    stopped on exit. ``server_options`` go to ``server_class`` (:class:`LiveServer`)."""
    folder = Path(folder)
    common = {"ECGWEB_SECRET_KEY": "shared-by-the-instances", "ECGWEB_MEDIA_ROOT": str(folder / "uploads")}
    if postgres is not None:
        common["DATABASE_URL"] = postgres.database_url(_database_name(folder))
    else:
        common["ECGWEB_SQLITE_PATH"] = str(folder / "db.sqlite3")
    servers: list[LiveServer] = []
    try:
        for i in range(count):
            servers.append(server_class(folder / f"instance-{i}", {**common, **(env or {})}, **server_options))
            servers[-1].start()
        yield servers
    finally:
        for server in servers:
            server.stop()
