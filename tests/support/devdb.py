"""A throw-away PostgreSQL server for the web service's tests (test equipment: never
for real data; ``support.server.temp_postgres``).

The web service documents PostgreSQL for hospital deployments (webapp/README.md,
"Several instances with PostgreSQL"); this starts Debian's PostgreSQL (``initdb``
and ``pg_ctl``, from PATH or /usr/lib/postgresql/<version>/bin) in a temporary
folder, listening on a free loopback port only, with ``trust`` authentication for
its single user, and removes everything when stopped. PostgreSQL refuses to run
as root, so as root the server runs as the ``postgres`` user (else ``nobody``)
through ``runuser``. Never for real data.

``python tests/support/devdb.py [--durable]`` starts one, prints its URL (for
``benchmarks/bench_serve.py --database postgres --postgres-url URL``) and keeps it
until Ctrl-C; ``--durable`` keeps PostgreSQL's fsync defaults, as the README's
figures were measured.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ecgpaper.errors import UserError

INSTALL_HINT = ("install Debian's PostgreSQL server (apt-get install -y postgresql; "
                "./run_tests.sh does it where missing)")


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "pg_ctl").exists():
        return Path(initdb).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)] or [0])
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """``start()`` a private PostgreSQL on 127.0.0.1, ``database_url(name)`` for a new
    database, ``stop()`` to shut it down and delete its files.

    ``durable=False`` (tests) turns fsync off: faster, and nothing is kept anyway;
    ``durable=True`` keeps PostgreSQL's defaults (for the serving benchmark).
    """

    USER = "ecg"

    def __init__(self, durable: bool = False):
        self.durable = durable
        self.bindir = find_pg_bin()
        self.folder: Path | None = None
        self.port: int | None = None

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise UserError("running as root, PostgreSQL needs another user, and runuser is missing")
        return [runuser, "-u", self.os_user, "--"]

    def _run(self, *cmd: str) -> None:
        res = subprocess.run([*self._as_server_user(), *cmd], capture_output=True, text=True,
                             timeout=120, cwd=self.folder)
        if res.returncode != 0:
            raise UserError(f"{Path(cmd[0]).name} failed ({res.returncode}): "
                            f"{(res.stdout + res.stderr).strip()[-2000:]}")

    def start(self) -> "TempPostgres":
        if self.bindir is None:
            raise UserError(f"PostgreSQL's initdb/pg_ctl were not found: {INSTALL_HINT}")
        self.os_user = next((name for name in ("postgres", "nobody") if _user_exists(name)), None)
        if os.geteuid() == 0 and self.os_user is None:
            raise UserError("running as root, and there is no 'postgres' or 'nobody' user to run "
                            "PostgreSQL as")
        self.folder = Path(tempfile.mkdtemp(prefix="ecgpaper-postgres-"))
        if os.geteuid() == 0:  # the server's user owns its folder; nobody else may read it
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.folder.chmod(0o700)
        data = self.folder / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", self.USER, "--auth=trust",
                  "-E", "UTF8", "--no-locale", *([] if self.durable else ["--no-sync"]))
        self.port = _free_port()
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                   f"-c unix_socket_directories={self.folder}", "-c max_connections=200"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "server.log"),
                  "-o", " ".join(options), "-w", "-t", "60", "start")
        return self

    def database_url(self, name: str) -> str:
        """Create database ``name`` and return its ``DATABASE_URL``."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise UserError(f"database name {name!r}: lower-case letters, digits and _ only")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgres://{self.USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            if self.port is not None:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                          "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = self.port = None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


if __name__ == "__main__":
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="a throw-away PostgreSQL on loopback, until Ctrl-C")
    ap.add_argument("--durable", action="store_true", help="keep PostgreSQL's fsync defaults")
    pg = TempPostgres(durable=ap.parse_args().durable).start()
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # to the sigwait
        print(f"postgres://{pg.USER}@127.0.0.1:{pg.port}/postgres  (Ctrl-C stops and deletes it)", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        pg.stop()
