"""Request middleware: the audit log, the early upload-size refusal, and the
headers that keep patient data out of caches and foreign scripts out of pages."""
from __future__ import annotations

import json
import logging
import time

from django.conf import settings
from django.http import JsonResponse
from rest_framework.exceptions import AuthenticationFailed

from .security import FORWARDING_HEADERS, ExpiringTokenAuthentication, client_ip

audit_log = logging.getLogger("ecgweb.audit")
log = logging.getLogger("classifier")

#: multipart framing and the form's other fields on top of the image itself
_MULTIPART_OVERHEAD = 64 * 1024


def _username(request) -> str:
    user = getattr(request, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else "-"


class AuditLogMiddleware:
    """One line per request (paper section 5.3's audit log): user, client address,
    method, path, status, milliseconds, and what the views add: the record read or
    written and its owner (``record=``, ``owner=``), ``other_user=1`` when someone
    reads a record that is not theirs (staff, auditors), the user name tried in a
    failed login (``attempted=``) and the upload's sha256."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        t0 = time.perf_counter()
        response = self.get_response(request)
        fields = [f"user={json.dumps(_username(request))}", f"ip={client_ip(request)}",
                  f"method={request.method}", f"path={json.dumps(request.path)}",
                  f"status={response.status_code}", f"ms={(time.perf_counter() - t0) * 1e3:.1f}",
                  f"sha256={getattr(request, 'upload_sha256', '-')}"]
        record = getattr(request, "audit_record", None)
        if record is not None:
            record_id, owner = record
            fields += [f"record={record_id}", f"owner={json.dumps(owner)}"]
            if owner != _username(request):
                fields.append("other_user=1")
        if hasattr(request, "audit_attempted_username"):
            fields.append(f"attempted={json.dumps(request.audit_attempted_username)}")
        audit_log.info(" ".join(fields))
        return response


class ProxyConfiguredMiddleware:
    """Behind a reverse proxy the server must know it (issue 22, finding 3): while
    ``ECGWEB_PROXY`` is unset, a request carrying X-Forwarded-For, Forwarded or
    X-Real-IP is answered 503 ``proxy_not_configured`` (health and readiness too, so a
    load balancer never sends traffic), instead of every client sharing the proxy's
    limits. ``ECGWEB_PROXY=direct`` says there is none (the headers are then ignored)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.logged = False

    def __call__(self, request):
        if settings.ECGWEB_PROXY_MODE is None and any(h in request.META for h in FORWARDING_HEADERS):
            if not self.logged:
                log.error("a request came through a reverse proxy (it carries X-Forwarded-For or "
                          "similar) but ECGWEB_PROXY is unset: refusing requests until it is set")
                self.logged = True
            return JsonResponse(
                {"error": "proxy_not_configured",
                 "detail": "This server is reached through a reverse proxy that it does not know "
                           "of. The administrator must set ECGWEB_PROXY (the proxies' addresses, "
                           "or 'direct') and restart it (webapp/README.md, Deployment)."},
                status=503)
        return self.get_response(request)


class UploadSizeLimitMiddleware:
    """Refuse a body announced as larger than the upload limit before reading it
    (placed after authentication, so the audit log names the user; an API token is
    looked up here, since DRF would only read it in the view)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.ECGWEB_MAX_UPLOAD_BYTES
        if length > limit + _MULTIPART_OVERHEAD:
            if not request.user.is_authenticated:
                try:
                    found = ExpiringTokenAuthentication().authenticate(request)
                except AuthenticationFailed:
                    found = None
                if found is not None:
                    request.user = found[0]
            return JsonResponse(
                {"error": "too_large",
                 "detail": f"The upload is {length / 2**20:.1f} MB; the limit is "
                           f"{limit / 2**20:.0f} MB. Upload a smaller (e.g. JPEG) copy of the ECG."},
                status=413)
        return self.get_response(request)


class NoStoreApiMiddleware:
    """API answers (records, images, heat maps) carry patient data: no cache may keep
    them, so nothing stays in a shared workstation's browser after sign-out."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith("/api/"):
            response["Cache-Control"] = "no-store"
        return response


class ContentSecurityPolicyMiddleware:
    """The ``Content-Security-Policy`` header (``ECGWEB_CSP``) on every response.

    Hand-written: Django 5.2 has no CSP support (it arrives in Django 6.0) and a
    fixed policy without nonces is one header, not worth a dependency.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.ECGWEB_CSP:
            response.setdefault("Content-Security-Policy", settings.ECGWEB_CSP)
        return response
