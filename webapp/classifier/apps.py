"""App config: holds the one :class:`ecgpaper.serve.inference.Classifier` of this process."""
from __future__ import annotations

import logging
import os
import threading

from django.apps import AppConfig
from django.conf import settings

log = logging.getLogger("classifier")


def _cap_tensorflow_threads() -> None:
    """``ECGWEB_TF_THREADS`` (set by ``ecgpaper serve``: the cores divided among the
    workers) as TensorFlow's intra- and inter-op thread pools, before TensorFlow starts
    (issue 22, finding 8: workers do not oversubscribe the CPU)."""
    threads = int(os.environ.get("ECGWEB_TF_THREADS", "0") or 0)
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its pools
        log.warning("TensorFlow had started already; ECGWEB_TF_THREADS=%d not applied", threads)
        return
    log.info("TensorFlow: %d intra-op and %d inter-op threads per worker",
             tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads())


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
                _cap_tensorflow_threads()
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
