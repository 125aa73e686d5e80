"""A live web service for the tests: ``ecgpaper.serve.live`` (``serve`` in a child
process on a free loopback port) with the tests' conveniences: every user's password
is :func:`password_for` their name, and :func:`temp_postgres` is a throw-away
PostgreSQL (``support.devdb``). The tests import it as ``support.server`` (pytest
puts tests/ on the path for conftest.py)."""
from __future__ import annotations

import contextlib
import functools

from ecgpaper.serve import live
from ecgpaper.serve.live import API, MANAGE, REPO, ServerFailed, auth, free_port

__all__ = ["API", "MANAGE", "REPO", "LiveServer", "ServerFailed", "auth", "free_port", "password_for",
           "running_instances", "temp_postgres"]


def password_for(username: str) -> str:
    """The password :meth:`LiveServer.create_users` gives ``username``."""
    return f"{username}-pw-1234"


class LiveServer(live.LiveServer):
    def create_users(self, *names: str) -> dict[str, str]:
        """Ordinary users (password :func:`password_for`), each with an API token:
        ``{name: token}``."""
        return super().create_users({name: password_for(name) for name in names})


#: several servers on one database (``ecgpaper.serve.live.running_instances``), of this LiveServer
running_instances = functools.partial(live.running_instances, server_class=LiveServer)


@contextlib.contextmanager
def temp_postgres(durable: bool = False):
    """A throw-away PostgreSQL (``support.devdb.TempPostgres``: loopback, temporary
    folder), stopped and deleted on exit; ``durable=False`` turns fsync off."""
    from support.devdb import TempPostgres

    pg = TempPostgres(durable=durable).start()
    try:
        yield pg
    finally:
        pg.stop()
