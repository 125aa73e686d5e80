"""One row per classified upload: who, when, which file (stored under a generated
name), its sha256, the result, the model run and the latency (paper section 3.4)."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Classification(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="classifications")
    created = models.DateTimeField(default=timezone.now, db_index=True)
    filename = models.CharField(max_length=255, help_text="the uploaded file's name, for display only")
    sha256 = models.CharField(max_length=64, db_index=True)
    image = models.FileField(upload_to="images/%Y/%m/", max_length=200)
    heatmap = models.FileField(upload_to="heatmaps/%Y/%m/", max_length=200, blank=True)
    class_code = models.CharField(max_length=16)
    #: class_name, probabilities [{code, name, probability}], model {name, run_id,
    #: version, dataset, synthetic}, timings {preprocess_ms, inference_ms, ...}
    result = models.JSONField()
    model_run_id = models.CharField(max_length=64)
    inference_ms = models.FloatField()
    total_ms = models.FloatField()

    class Meta:
        ordering = ["-created", "-id"]
        #: reading other users' records is a role of its own (the "auditor" group holds it),
        #: separate from admin access (is_staff)
        permissions = [("view_all_classifications", "Can read every user's classifications")]
        indexes = [models.Index(fields=["user", "-created"], name="classif_user_created")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.class_code} ({self.filename}, {self.user})"


class ThrottleHit(models.Model):
    """One request counted by a throttle (issue 22, finding 2): ``key`` names the throttle
    and the client, ``expires`` is when the hit stops counting. A throttle inserts its hit,
    then counts the live hits of its key (each statement committed on its own, so the last
    of two simultaneous requests sees both: a limit is never exceeded) and deletes its hit
    again when it refuses. Rows go only when they expire: there is no cull that could wipe
    the login counters. On SQLite they live in a file of their own (``routers.py``)."""

    key = models.CharField(max_length=200)
    expires = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["key", "expires"], name="throttle_key_expires"),
                   models.Index(fields=["expires"], name="throttle_expires")]
