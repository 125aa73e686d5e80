"""Database router: on SQLite, the throttling cache lives in a file of its own."""
from __future__ import annotations

CACHE_APP = "django_cache"  # the app label of Django's DatabaseCache entries


class ThrottleCacheRouter:
    """Send the database cache (DRF's throttle counters, written on every request)
    to the ``throttle`` database, so that counting never waits for, nor holds, the
    write lock of the SQLite file that keeps records and sessions."""

    def db_for_read(self, model, **hints):
        return "throttle" if model._meta.app_label == CACHE_APP else None

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label == CACHE_APP:
            return db == "throttle"
        return db != "throttle"
