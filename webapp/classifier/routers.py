"""Database router: on SQLite, the throttle counters live in a file of their own."""
from __future__ import annotations

#: the models kept in the ``throttle`` database: (app label, model name)
THROTTLE_MODELS = {("classifier", "throttlehit")}


def _is_throttle(app_label: str, model_name: str | None) -> bool:
    return (app_label, (model_name or "").lower()) in THROTTLE_MODELS


class ThrottleCacheRouter:
    """Send the throttle counters (``classifier.models.ThrottleHit``, written on every
    request) to the ``throttle`` database, so that counting never waits for, nor holds,
    the write lock of the SQLite file that keeps records and sessions."""

    def db_for_read(self, model, **hints):
        return "throttle" if _is_throttle(model._meta.app_label, model._meta.model_name) else None

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if _is_throttle(app_label, model_name):
            return db == "throttle"
        return db != "throttle"
