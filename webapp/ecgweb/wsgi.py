"""WSGI entry point for gunicorn (``ecgweb.wsgi:application``).

Imported only when serving, so this is where each worker loads the exported
model once, before its first request (set ``ECGWEB_PRELOAD_MODEL=0`` to load it
on the first classification instead). A missing model is logged, not fatal:
the API then answers 503 ``model_unavailable`` until one is exported.
"""
import os
import sys
from pathlib import Path

WEBAPP = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(WEBAPP), str(WEBAPP.parent)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecgweb.settings")

from django.apps import apps  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from ecgweb import gunicorn_conf  # noqa: E402

application = get_wsgi_application()

if os.environ.get("ECGWEB_PRELOAD_MODEL", "1") != "0":
    apps.get_app_config("classifier").preload()
get_resolver().url_patterns  # import the views now (DRF, drf-spectacular), not in a first request
gunicorn_conf.booted()  # the boot's own time limit ends; requests get --timeout
