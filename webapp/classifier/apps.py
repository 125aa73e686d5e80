"""App config: holds the one :class:`ecgpaper.serve.inference.Classifier` of this process."""
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
        from . import signals  # noqa: F401  (stored files go with their records)

        self._classifier = None
        self._failure: tuple | None = None  # (export stamp, message) of the last failed load
        self._lock = threading.Lock()

    @property
    def model_loaded(self) -> bool:
        return self._classifier is not None

    def _export_stamp(self):
        """(mtime, size) of the export's metadata and model files: a new export changes it."""
        from ecgpaper.runs.export import EXPORT_NAME

        stamp = []
        for name in (f"{EXPORT_NAME}.json", f"{EXPORT_NAME}.keras"):
            try:
                st = (settings.ECGWEB_MODELS_DIR / name).stat()
                stamp.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def get_classifier(self):
        """The process's Classifier; raises ModelUnavailable, for a missing model and
        for any failure to load one (a damaged Keras file, a layer safe mode refuses,
        metadata of the wrong shape). The failure is remembered and retried only once
        the export's files change, so a broken model costs a stat per request, not a
        reload, and never takes the worker down."""
        if self._classifier is not None:
            return self._classifier
        from ecgpaper.serve.inference import Classifier, ModelUnavailable

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
                except Exception as exc:  # noqa: BLE001: whatever Keras or TF raise while loading
                    log.exception("the exported model could not be loaded")
                    self._failure = (stamp, (
                        f"The exported model could not be loaded ({type(exc).__name__}; details in "
                        "the server log). Export it again: `python -m ecgpaper export`, then "
                        "restart the server."))
                    raise ModelUnavailable(self._failure[1]) from None
                meta = self._classifier.metadata
                log.info("loaded model %s (run %s, dataset %s) from %s", meta["model"],
                         meta["run_id"], meta["dataset"], settings.ECGWEB_MODELS_DIR)
        return self._classifier

    def preload(self) -> None:
        """Load the model now; a missing one is logged (the API answers 503 until one exists)."""
        from ecgpaper.serve.inference import ModelUnavailable

        try:
            self.get_classifier()
        except ModelUnavailable as exc:
            log.warning("no model loaded: %s", exc)
