"""Stored files go with their record, however it is deleted: through the API,
in the admin (one record, a bulk action, or a user with all their records),
or by the retention command (paper section 5.3: patient data can be removed)."""
from __future__ import annotations

import logging

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Classification

log = logging.getLogger("classifier")


@receiver(post_delete, sender=Classification)
def delete_stored_files(sender, instance: Classification, using, **kwargs) -> None:
    """Remove the upload and the heat map once the deletion is committed (a rolled-back
    deletion keeps them). Connecting this signal also makes Django delete cascaded
    records one by one, so a deleted user's records are covered too."""
    stored = [(field.storage, field.name) for field in (instance.image, instance.heatmap) if field]

    def remove() -> None:
        for storage, name in stored:
            try:
                storage.delete(name)
            except OSError:  # the record is gone already; the retention command's sweep removes it
                log.exception("could not delete %s of a deleted record", name)

    transaction.on_commit(remove, using=using)
