"""Every API error as ``{"error": "<short_code>", "detail": "<what was wrong and what to do>"}``."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.views import exception_handler

from ecgpaper.serve.inference import InvalidImage, ModelUnavailable

from .security import ThrottleUnavailable
from .services import DeletionRefused, NotReady


class ApiError(exceptions.APIException):
    """An API error with its own short code and a sentence for the user."""

    def __init__(self, status_code: int, error: str, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.error = error


#: DRF's own exceptions -> (code, what to do)
_DRF_ERRORS = {
    exceptions.NotAuthenticated: (
        "not_authenticated", "Log in, or send the header 'Authorization: Token <your token>'."),
    exceptions.AuthenticationFailed: (
        "authentication_failed", "The token or session is not valid: log in again, or ask an "
                                 "administrator for a new token."),
    exceptions.PermissionDenied: ("permission_denied", "You are not allowed to do this."),
    exceptions.NotFound: ("not_found", "There is nothing at this address, or it belongs to "
                                       "another user."),
    exceptions.MethodNotAllowed: ("method_not_allowed", "See /api/v1/docs/ for the methods of "
                                                        "each endpoint."),
    exceptions.UnsupportedMediaType: (
        "unsupported_media_type", "Send JSON, or for uploads multipart/form-data with the "
                                  "image in the field 'image'."),
    exceptions.ParseError: ("parse_error", "The request body could not be read; check that it "
                                          "is valid JSON or multipart/form-data."),
    exceptions.NotAcceptable: ("not_acceptable", "This API answers with JSON only."),
}


def _from_service(exc: Exception) -> Exception:
    """The typed refusals of services.py as API errors with their status codes."""
    if isinstance(exc, InvalidImage):
        code = {"too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,  # a readable image, but
                "not_an_ecg": status.HTTP_422_UNPROCESSABLE_ENTITY}.get(  # not an ECG page
                    exc.code, status.HTTP_400_BAD_REQUEST)
        return ApiError(code, exc.code, exc.detail)
    if isinstance(exc, ModelUnavailable):
        return ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "model_unavailable", str(exc))
    if isinstance(exc, NotReady):
        return ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, exc.code, str(exc))
    if isinstance(exc, ThrottleUnavailable):
        return ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "throttle_unavailable", str(exc.detail))
    if isinstance(exc, DeletionRefused):
        return ApiError(status.HTTP_403_FORBIDDEN, "permission_denied", str(exc))
    return exc


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        return " ".join(f"{field}: {_flatten(value)}" for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc, context):
    """DRF's handler, with every body rewritten to ``{"error", "detail"}``."""
    exc = _from_service(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ApiError):
        error, detail = exc.error, str(exc.detail)
    elif isinstance(exc, exceptions.Throttled):
        request = context.get("request")
        rate, what = getattr(getattr(request, "_request", request), "throttle_limit",
                             (settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["user"], "per user"))
        wait = f" Try again in {int(exc.wait) + 1} s." if exc.wait is not None else ""
        error, detail = "throttled", f"Too many requests: the limit is {rate} {what}.{wait}"
    elif isinstance(exc, exceptions.ValidationError):
        error, detail = "invalid_request", _flatten(exc.detail)
    elif isinstance(exc, exceptions.PermissionDenied) and str(exc.detail).startswith("CSRF Failed"):
        error, detail = "csrf_failed", (
            f"{exc.detail} Fetch /api/v1/auth/csrf/ and send its token in the X-CSRFToken header.")
    else:
        error, hint = next(((code, hint) for cls, (code, hint) in _DRF_ERRORS.items()
                            if isinstance(exc, cls)), ("error", ""))
        detail = f"{_flatten(getattr(exc, 'detail', exc))} {hint}".strip()
    response.data = {"error": error, "detail": detail}
    return response


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception):
    if _is_api(request):
        return JsonResponse({"error": "bad_request", "detail": "The request was malformed (e.g. "
                             "more than one file, or an oversized form). Send one image in the "
                             "multipart field 'image'."}, status=status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)


def not_found(request, exception):
    if _is_api(request):
        return JsonResponse({"error": "not_found", "detail": "There is no API endpoint at this "
                             "address; see /api/v1/docs/."}, status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return JsonResponse({"error": "server_error", "detail": "The server failed to handle the "
                             "request; it has been logged. Try again, and tell the administrator "
                             "if it persists."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request)
