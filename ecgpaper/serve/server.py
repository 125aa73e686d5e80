"""``python -m ecgpaper serve``: the web service of the paper's section 3.4.

Prepares the database (migrations, the throttling cache table) and the static
files, then replaces this process with gunicorn serving ``webapp/``'s Django
project; every worker loads the exported model from ``models/`` once.
Settings come from the environment (webapp/README.md). Everything the server
writes is private to its user (the settings set umask 077: patient data, paper
section 5.3). Bound beyond loopback, it first prints Django's deployment checks.
"""
from __future__ import annotations

import argparse
import io
import ipaddress
import os
import sys

from ecgpaper import paths
from ecgpaper.errors import UserError

WEBAPP = paths.REPO / "webapp"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def deploy_check_report() -> str:
    """Django's ``check --deploy`` findings (HTTPS, HSTS, cookies...) as text, '' when clean."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    out = io.StringIO()
    try:
        call_command("check", deploy=True, stdout=out, stderr=out, fail_level="CRITICAL")
    except SystemCheckError as exc:
        out.write(str(exc))
    text = out.getvalue().strip()
    return "" if text.startswith("System check identified no issues") else text


def _prepare_django(env: dict, host: str) -> None:
    """migrate (every database: the throttle counters may have one of their own),
    collectstatic (and the deployment checks when bound beyond loopback): in this
    process, before the exec. Bound beyond loopback, ``ECGWEB_PROXY`` must be set."""
    os.environ.update(env)
    sys.path[:0] = [str(WEBAPP), str(WEBAPP.parent)]
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    if settings.ECGWEB_PROXY_MODE is None and not is_loopback(host):
        raise UserError(f"bound to {host}, beyond loopback, the server must know whether clients "
                        "reach it directly or through a reverse proxy: set ECGWEB_PROXY=direct, or "
                        "ECGWEB_PROXY to the proxies' addresses (webapp/README.md, Deployment)")
    for database in settings.DATABASES:
        call_command("migrate", interactive=False, verbosity=0, database=database)
    call_command("collectstatic", interactive=False, verbosity=0)
    if not is_loopback(host):
        report = deploy_check_report()
        print(f"bound to {host}, beyond loopback: Django's deployment checks say\n"
              f"{report or 'no issues'}\n(webapp/README.md: HTTPS behind a reverse proxy)",
              file=sys.stderr, flush=True)
    from django.db import connections

    connections.close_all()


def _env_number(name: str, default: float, minimum: float) -> float:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        raise UserError(f"{name}={text!r} is not a number") from None
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum:g}, not {value:g}")
    return value


def worker_limits(workers: int) -> dict:
    """What bounds a worker (issue 22, finding 8), from the environment: the seconds a
    request may take before gunicorn kills the worker (``ECGWEB_REQUEST_TIMEOUT_S``, 30:
    below the proxy's read timeout, 60 s in webapp/README.md), the uploads after which
    a worker is replaced (``ECGWEB_MAX_UPLOADS``, 300, with 10% jitter: memory that a
    long-lived TensorFlow process accumulates is given back; counted by
    ``ecgweb.gunicorn_conf``, not gunicorn's ``--max-requests``, which a flood of cheap
    requests would trip) and TensorFlow's threads per worker (``ECGWEB_TF_THREADS``,
    the CPU cores divided among the workers)."""
    if os.environ.get("ECGWEB_MAX_REQUESTS"):
        raise UserError("ECGWEB_MAX_REQUESTS is replaced by ECGWEB_MAX_UPLOADS: workers are now "
                        "replaced after that many uploads, not requests (webapp/README.md)")
    return {
        "request_timeout": int(_env_number("ECGWEB_REQUEST_TIMEOUT_S", 30, 1)),
        "max_uploads": int(_env_number("ECGWEB_MAX_UPLOADS", 300, 0)),
        "tf_threads": int(_env_number("ECGWEB_TF_THREADS", max(1, (os.cpu_count() or 1) // workers), 1)),
    }


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 2) -> None:
    """Migrate, collect static files, then exec gunicorn on ``host:port``.

    Gunicorn's sync workers each handle one request at a time; each holds one
    copy of the model, so ``workers`` trades memory for parallel requests
    (2 suits 2 CPU cores: TensorFlow already spreads one forward pass over them).
    """
    if not (WEBAPP / "manage.py").is_file():
        raise UserError(f"the web app is missing ({WEBAPP}); serve runs from a checkout of ecgpaper")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    env = {
        "DJANGO_SETTINGS_MODULE": "ecgweb.settings",
        "PYTHONPATH": os.pathsep.join(
            [str(WEBAPP), str(WEBAPP.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    _prepare_django(env, host)
    limits = worker_limits(workers)
    env["ECGWEB_TF_THREADS"] = str(limits["tf_threads"])  # read by the app as it loads the model
    env["ECGWEB_MAX_UPLOADS"] = str(limits["max_uploads"])  # read by ecgweb.gunicorn_conf
    os.environ.update(env)
    argv = [sys.executable, "-m", "gunicorn", "ecgweb.wsgi:application",
            "--chdir", str(WEBAPP), "--bind", f"{host}:{port}", "--workers", str(workers),
            # the hooks give the boot (TensorFlow, the model) its own ECGWEB_BOOT_TIMEOUT_S
            "--config", "python:ecgweb.gunicorn_conf",
            "--timeout", str(limits["request_timeout"]), "--graceful-timeout", "30"]
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        # gunicorn >= 25 opens one control socket per user (~/.gunicorn): not needed here,
        # and two instances would fight over it
        argv.append("--no-control-socket")
    print(f"serving http://{host}:{port}/ (API docs /api/v1/docs/) with {workers} worker(s)",
          flush=True)
    os.execve(sys.executable, argv, os.environ)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ecgpaper command line."""
    p = subparsers.add_parser(
        "serve", help="run the web service (Django REST API + React page) with gunicorn",
        description="Migrate the database, collect static files and run gunicorn on the exported "
                    "model (models/ecg_classifier.keras). Configure with ECGWEB_* environment "
                    "variables; see webapp/README.md.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s; use 0.0.0.0 behind a proxy only)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="gunicorn worker processes, each with its own model copy (default %(default)s)")
    p.set_defaults(func=lambda args: serve(args.host, args.port, args.workers))
    return p
