"""App config: holds the one :class:`ecgpaper.inference.Classifier` of this process."""
from __future__ import annotations

import logging
import threading

from django.apps import AppConfig
from django.conf import settings

log = logging.getLogger("classifier")


class ClassifierConfig(AppConfig):
    """Loads the exported model once per process, on first use (``get_classifier``)
    or, when serving, as the worker starts (``preload`` from ecgweb/wsgi.py), so
    ``manage.py migrate`` and friends never need a model or TensorFlow."""

    name = "classifier"
    verbose_name = "ECG classifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        self._classifier = None
        self._failure: tuple | None = None  # (export stamp, message) of the last failed load
        self._lock = threading.Lock()

    @property
    def model_loaded(self) -> bool:
        return self._classifier is not None

    def _export_stamp(self):
        from ecgpaper.experiments import EXPORT_NAME

        meta = settings.ECGWEB_MODELS_DIR / f"{EXPORT_NAME}.json"
        try:
            st = meta.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def get_classifier(self):
        """The process's Classifier; raises ModelUnavailable (retried only once the
        export's metadata file changes, so a missing model costs a stat per request)."""
        if self._classifier is not None:
            return self._classifier
        from ecgpaper.inference import Classifier, ModelUnavailable

        with self._lock:
            if self._classifier is None:
                stamp = self._export_stamp()
                if self._failure is not None and self._failure[0] == stamp:
                    raise ModelUnavailable(self._failure[1])
                try:
                    self._classifier = Classifier(settings.ECGWEB_MODELS_DIR)
                except ModelUnavailable as exc:
                    self._failure = (stamp, str(exc))
                    raise
                meta = self._classifier.metadata
                log.info("loaded model %s (run %s, dataset %s) from %s", meta["model"],
                         meta["run_id"], meta["dataset"], settings.ECGWEB_MODELS_DIR)
        return self._classifier

    def preload(self) -> None:
        """Load the model now; a missing one is logged (the API answers 503 until one exists)."""
        from ecgpaper.inference import ModelUnavailable

        try:
            self.get_classifier()
        except ModelUnavailable as exc:
            log.warning("no model loaded: %s", exc)
