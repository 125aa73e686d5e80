"""What the API does, apart from HTTP (paper section 3.4: an uploaded ECG image
gets its class in near real time; section 5.2: with a Grad-CAM heat map;
section 5.3: a record can be deleted with its files, and a failed upload leaves
nothing behind).

The views validate the request, call these functions and serialise what they
return. Refusals are typed: :class:`ecgpaper.serve.inference.InvalidImage` (a file
that cannot be classified, with the API's short code), ``ModelUnavailable``
(no usable model), :class:`DeletionRefused` and :class:`NotReady` (readiness);
``errors.api_exception_handler``
gives each its status code and ``{"error", "detail"}`` body.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass

from django.apps import apps
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError

from ecgpaper.serve.inference import InvalidImage, stored_copy

from . import files
from .models import Classification

log = logging.getLogger("classifier")

#: the permission to delete another user's record (superusers hold it)
DELETE_ANY = "classifier.delete_classification"


class DeletionRefused(Exception):
    """The user may not delete this record (it is another user's)."""


class NotReady(Exception):
    """Something every request needs is unusable (``code``: the API's short code)."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def check_ready() -> None:
    """Raise :class:`NotReady` unless the database answers a query, the upload folder
    takes a new file and the model is usable (``ModelUnavailable``). The server log
    gets the details (paths, exception texts); the answer does not."""
    try:
        Classification.objects.exists()
    except DatabaseError as exc:
        log.error("not ready: the database cannot be queried: %s: %s", type(exc).__name__, exc)
        raise NotReady("database_unavailable",
                       "The database cannot be queried (details in the server log). Check that "
                       "it is running and migrated (`python webapp/manage.py migrate`).") from None
    media = settings.MEDIA_ROOT
    try:
        os.makedirs(media, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=media):  # what FileSystemStorage.save needs
            pass
    except OSError as exc:
        log.error("not ready: the upload folder %s is not writable: %s: %s", media,
                  type(exc).__name__, exc)
        raise NotReady("storage_unavailable",
                       "The upload folder (ECGWEB_MEDIA_ROOT) is not a writable folder (details "
                       "in the server log). Fix its owner and permissions, or the disk.") from None
    current_classifier()


def current_classifier():
    """This process's :class:`ecgpaper.serve.inference.Classifier`; raises ``ModelUnavailable``
    (with what to run) when no usable model has been exported."""
    return apps.get_app_config("classifier").get_classifier()


@dataclass(frozen=True)
class ReceivedUpload:
    """An upload's bytes, read once the size is known to be within the limit."""

    name: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class ClassifiedUpload:
    """The saved record and the heat map PNG (None when made without one)."""

    record: Classification
    heatmap_png: bytes | None


def receive_upload(upload: UploadedFile) -> ReceivedUpload:
    """Read an uploaded file; ``InvalidImage("too_large")`` when it is over
    ``ECGWEB_MAX_UPLOAD_BYTES``, before a byte of it is read."""
    limit = settings.ECGWEB_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise InvalidImage("too_large", f"The file is {upload.size / 2**20:.1f} MB; the limit is "
                                        f"{limit / 2**20:.0f} MB. Upload a smaller (e.g. JPEG) copy "
                                        "of the ECG.")
    data = upload.read()
    return ReceivedUpload(upload.name or "upload", data, hashlib.sha256(data).hexdigest())


def classify_upload(user, upload: ReceivedUpload, *, explain: bool,
                    started: float | None = None) -> ClassifiedUpload:
    """Decode, classify (with the Grad-CAM heat map when ``explain``), store a copy
    without metadata and save the record of ``user``.

    Raises ``ModelUnavailable`` without a usable model and ``InvalidImage`` for a file
    that cannot be classified (``not_an_ecg``: the page gate found no ECG page; nothing
    is stored then); if storing or saving fails, the files already written
    are deleted before the error goes on. ``started`` (``time.perf_counter()`` when
    the request arrived) is where the record's ``total_ms`` counts from.
    """
    started = time.perf_counter() if started is None else started
    classifier = current_classifier()
    result = classifier.classify(upload.data, explain=explain, max_bytes=settings.ECGWEB_MAX_UPLOAD_BYTES,
                                 max_pixels=settings.ECGWEB_MAX_PIXELS)  # not an ECG page: InvalidImage
    band = settings.ECGWEB_HEADER_BAND
    stored, extension = stored_copy(upload.data, blank_header=band == "blank", crop_header=band == "crop")
    meta = classifier.metadata
    filename = upload.name if settings.ECGWEB_KEEP_FILENAMES else f"upload.{extension}"
    record = Classification(
        user=user, filename=filename[:255], sha256=upload.sha256,
        class_code=result["class_code"], model_run_id=meta["run_id"],
        inference_ms=result["timings"]["inference_ms"], total_ms=0.0,
        result={
            "class_name": result["class_name"],
            "probabilities": [{"code": code, "name": name, "probability": result["probabilities"][code]}
                              for code, name in zip(classifier.class_codes, classifier.class_names)],
            "model": {"name": meta["model"], "run_id": meta["run_id"],
                      "version": meta["ecgpaper_version"], "dataset": meta["dataset"],
                      "synthetic": meta["synthetic"]},
            "timings": result["timings"],
        })
    stem = uuid.uuid4().hex
    parts: list[str] = []  # written under temporary names, renamed once the record is committed
    try:  # nothing is left behind if any step fails (a dead worker's files: files.sweep_orphans)
        parts.append(files.write_part(record.image, f"{stem}.{extension}", stored))
        if result["heatmap_png"] is not None:
            parts.append(files.write_part(record.heatmap, f"{stem}.png", result["heatmap_png"]))
        record.total_ms = (time.perf_counter() - started) * 1e3
        record.save()
    except Exception:
        files.discard(record.image.storage, parts)
        raise
    files.publish(record, record.image.storage, parts)
    return ClassifiedUpload(record, result["heatmap_png"])


def delete_classification(record: Classification, user) -> None:
    """Delete ``record`` with its stored image and heat map (``classifier.signals``
    removes the files once the deletion is committed): its owner may, and a user
    with the ``delete_classification`` permission; anyone else gets
    :class:`DeletionRefused`."""
    if record.user_id != user.pk and not user.has_perm(DELETE_ANY):
        raise DeletionRefused("Only the user who uploaded this ECG (or an administrator) may delete it.")
    record.delete()
