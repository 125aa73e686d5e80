"""Request middleware: the audit log and the early upload-size refusal."""
from __future__ import annotations

import json
import logging
import time

from django.conf import settings
from django.http import JsonResponse

audit_log = logging.getLogger("ecgweb.audit")

#: multipart framing and the form's other fields on top of the image itself
_MULTIPART_OVERHEAD = 64 * 1024


class AuditLogMiddleware:
    """One line per request: user, method, path, status, milliseconds and the
    upload's sha256 (set by the classification view) when there was one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        t0 = time.perf_counter()
        response = self.get_response(request)
        user = getattr(request, "user", None)
        name = user.get_username() if user is not None and user.is_authenticated else "-"
        audit_log.info(
            "user=%s method=%s path=%s status=%d ms=%.1f sha256=%s",
            json.dumps(name), request.method, json.dumps(request.path), response.status_code,
            (time.perf_counter() - t0) * 1e3, getattr(request, "upload_sha256", "-"))
        return response


class UploadSizeLimitMiddleware:
    """Refuse a body announced as larger than the upload limit before reading it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.ECGWEB_MAX_UPLOAD_BYTES
        if length > limit + _MULTIPART_OVERHEAD:
            return JsonResponse(
                {"error": "too_large",
                 "detail": f"The upload is {length / 2**20:.1f} MB; the limit is "
                           f"{limit / 2**20:.0f} MB. Upload a smaller (e.g. JPEG) copy of the ECG."},
                status=413)
        return self.get_response(request)
