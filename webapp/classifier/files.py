"""Stored files that never outlive their record (issue 22, finding 6).

An upload's image and heat map are written under a temporary name (``<name>.part``)
and get their final name only after the record is committed. A worker that dies in
between (gunicorn's timeout, the OOM killer) or a write that fails leaves only
``.part`` files, and a deletion whose file removal failed after the commit leaves a
file no record names: :func:`sweep_orphans`, run by ``manage.py
purge_classifications``, removes both (after a grace period, so uploads in flight
are left alone) and finishes the renaming of a record committed just before a crash.
"""
from __future__ import annotations

import logging
import os
import time

from django.core.files.base import ContentFile

log = logging.getLogger("classifier")

PART_SUFFIX = ".part"
#: the folders of MEDIA_ROOT that hold stored files (Classification's upload_to)
STORED_FOLDERS = ("images", "heatmaps")


def write_part(field, name: str, data: bytes) -> str:
    """Write ``data`` for the file field ``field`` (its ``upload_to`` folder) under a
    temporary name; the field gets the final name. Returns the temporary name."""
    final = field.field.generate_filename(field.instance, name)
    part = field.storage.save(final + PART_SUFFIX, ContentFile(data))
    if part != final + PART_SUFFIX:  # the storage renamed it: the names must stay paired
        field.storage.delete(part)
        raise OSError(f"the storage stored {final}{PART_SUFFIX} as {part}")
    field.name = final
    return part


def discard(storage, parts: list[str]) -> None:
    """Delete temporary files (after a failed upload)."""
    for part in parts:
        try:
            storage.delete(part)
        except OSError:
            log.exception("could not delete %s (the retention command's sweep will)", part)


def publish(record, storage, parts: list[str]) -> None:
    """After ``record`` is committed: give its temporary files their final names. If that
    fails, the record is deleted again (with whatever was renamed) and the error goes on."""
    try:
        for part in parts:
            os.replace(storage.path(part), storage.path(part[: -len(PART_SUFFIX)]))
    except OSError:
        log.exception("renaming the stored files of record %s failed; the record is deleted", record.pk)
        record.delete()
        discard(storage, parts)
        raise


def sweep_orphans(grace_s: float, *, dry_run: bool = False) -> dict[str, int]:
    """Remove stored files that no record names and temporary files, older than
    ``grace_s`` seconds; rename a temporary file whose record exists to its final name.
    Returns the counts (``removed``, ``recovered``, ``kept_recent``)."""
    from django.core.files.storage import default_storage

    from .models import Classification

    referenced = set()
    for image, heatmap in Classification.objects.values_list("image", "heatmap").iterator():
        referenced.update(name for name in (image, heatmap) if name)
    counts = {"removed": 0, "recovered": 0, "kept_recent": 0}
    root = default_storage.location
    cutoff = time.time() - grace_s
    for folder in STORED_FOLDERS:
        for dirpath, _dirs, names in os.walk(os.path.join(root, folder)):
            for filename in names:
                path = os.path.join(dirpath, filename)
                name = os.path.relpath(path, root).replace(os.sep, "/")
                final = name[: -len(PART_SUFFIX)] if name.endswith(PART_SUFFIX) else None
                if final is not None and final in referenced and not default_storage.exists(final):
                    counts["recovered"] += 1
                    if not dry_run:
                        os.replace(path, default_storage.path(final))
                    continue
                if final is None and name in referenced:
                    continue
                try:
                    if os.stat(path).st_mtime > cutoff:
                        counts["kept_recent"] += 1
                        continue
                    counts["removed"] += 1
                    if not dry_run:
                        os.unlink(path)
                except FileNotFoundError:  # deleted meanwhile (by its record's deletion)
                    pass
    return counts
