"""API views (paper section 3.4: upload an ECG image, get its class in near real
time; section 5.2: with a Grad-CAM heat map), plus the React page at ``/``.

No user-controlled value ever becomes a path: uploads are stored under
generated names and served by record id, after the ownership check. Stored
copies carry no metadata (and optionally no header band), and every record can
be deleted with its files (paper section 5.3).

DRF tutorial layout: these views validate a request (serializers.py), call
services.py for what it asks (classify an upload, delete a record) and
serialise the answer; services.py's refusals get their status codes in
errors.py.
"""
from __future__ import annotations

import time

from django.apps import apps
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, login, logout
from django.http import FileResponse, HttpResponse
from django.middleware.csrf import get_token
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .errors import ApiError
from .models import Classification
from .security import LOGIN_THROTTLES, UploadRateThrottle, UserRateThrottle
from .serializers import (
    ClassificationCreatedSerializer,
    ClassificationSerializer,
    CsrfSerializer,
    ErrorSerializer,
    HealthSerializer,
    LoginSerializer,
    ModelInfoSerializer,
    UploadSerializer,
    UserSerializer,
)
from ecgweb.gunicorn_conf import UPLOAD_MARK

#: the permission that lets a user read every user's records (the "auditor" group has it)
VIEW_ALL = "classifier.view_all_classifications"

CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp",
                 "tif": "image/tiff", "bmp": "image/bmp", "gif": "image/gif"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _errors(*codes: int) -> dict:
    return {code: OpenApiResponse(ErrorSerializer) for code in codes}


def _user_data(user) -> dict:
    return UserSerializer({"username": user.get_username(), "is_staff": user.is_staff}).data


class HealthView(APIView):
    """Liveness: the process answers (200 even without a model; see ready/).
    Never throttled, no login."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(responses=HealthSerializer, auth=[])
    def get(self, request):
        loaded = apps.get_app_config("classifier").model_loaded
        return Response(HealthSerializer({"status": "ok", "model_loaded": loaded}).data)


class ReadyView(APIView):
    """Readiness for load balancers: 200 once this worker has a usable model, its
    database answers and the upload folder is writable; else 503 ``model_unavailable``,
    ``database_unavailable`` or ``storage_unavailable`` (with what to do). Never
    throttled, no login."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(responses={200: HealthSerializer, **_errors(503)}, auth=[])
    def get(self, request):
        services.check_ready()  # NotReady or ModelUnavailable: 503
        return Response(HealthSerializer({"status": "ready", "model_loaded": True}).data)


class CsrfTokenView(APIView):
    """The CSRF token (also set as the ``csrftoken`` cookie) for session clients."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=CsrfSerializer, auth=[])
    @method_decorator(ensure_csrf_cookie)
    def get(self, request):
        return Response({"csrfToken": get_token(request)})


class LoginView(APIView):
    """Session login; CSRF is enforced here too (no login CSRF). Attempts are
    throttled per user name and client address (``ECGWEB_THROTTLE_LOGIN``), per
    account and per address (``ECGWEB_THROTTLE_LOGIN_ACCOUNT``, ``_ADDRESS``)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [*LOGIN_THROTTLES, UserRateThrottle]

    @extend_schema(request=LoginSerializer, responses={200: UserSerializer, **_errors(400, 403, 429)},
                   auth=[])
    def post(self, request):
        SessionAuthentication().enforce_csrf(request)
        form = LoginSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user = authenticate(request, username=form.validated_data["username"],
                            password=form.validated_data["password"])
        if user is None:  # the audit log names an existing account, never what else was typed
            name = form.validated_data["username"]
            exists = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: name}).exists()
            request._request.audit_attempted_username = name if exists else "(no such account)"
            raise ApiError(status.HTTP_400_BAD_REQUEST, "invalid_credentials",
                           "The user name or password is wrong. Check them and try again.")
        login(request, user)
        return Response(_user_data(user))


class LogoutView(APIView):
    """End the session (CSRF enforced for session users) and revoke the API token
    the request was made with, if any."""

    permission_classes = [AllowAny]

    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        if isinstance(request.auth, Token):
            request.auth.delete()
        logout(request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    """Who is logged in."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: UserSerializer, **_errors(403)})
    def get(self, request):
        if not request.user.is_authenticated:
            raise ApiError(status.HTTP_403_FORBIDDEN, "not_authenticated",
                           "You are not logged in. Log in to continue.")
        return Response(_user_data(request.user))


#: what the model card says of the page gate (issue 22, item 9)
PAGE_GATE_CARD = ("rejects", "threshold", "threshold_rule", "source", "n_train", "n_val", "val_accepted")


def calibration_card(meta: dict) -> dict:
    """What the model card says of the probabilities: calibrated by the run's temperature
    scaling, fitted on its validation pages (``ecgpaper.runs.export``; every answer is
    divided by it in ``ecgpaper.serve.inference``), or not (the export of a run that
    predates it: temperature 1). ``statement`` is the sentence the page shows."""
    fitted = (meta.get("metrics") or {}).get("calibration") or {}
    temperature = float(meta.get("temperature", 1.0))
    card = {"calibrated": bool(fitted), "method": "temperature scaling" if fitted else None,
            "temperature": temperature, "fitted_on": fitted.get("fitted_on"), "n_val": fitted.get("n_val"),
            **{key: fitted.get(key) for key in ("test_ece_before", "test_ece_after",
                                                "test_brier_before", "test_brier_after")}}
    if not fitted:
        card["statement"] = ("The probabilities are not calibrated (this model's run has no temperature "
                             "scaling): read them as scores, not as how often the class is right.")
        return card
    ece = ""
    if card["test_ece_before"] is not None and card["test_ece_after"] is not None:
        ece = (f"; expected calibration error on the test pages {card['test_ece_before']:.1%} before, "
               f"{card['test_ece_after']:.1%} after")
    card["statement"] = (f"The probabilities are calibrated: temperature scaling (T = {temperature:.2f}) "
                         f"fitted on the run's {card['n_val']} {card['fitted_on']} pages{ece}.")
    return card


class ModelInfoView(APIView):
    """The served model's card: backbone, run, data it was trained on, test metrics,
    whether its probabilities are calibrated, and what its page gate turns away
    (HTTP 422 ``not_an_ecg``)."""

    @extend_schema(responses={200: ModelInfoSerializer, **_errors(401, 503)})
    def get(self, request):
        meta = services.current_classifier().metadata
        return Response(ModelInfoSerializer({
            "loaded": True, "model": meta["model"], "run_id": meta["run_id"],
            "version": meta["ecgpaper_version"], "dataset": meta["dataset"],
            "synthetic": meta["synthetic"], "profile": meta["profile"],
            "protocol": meta["protocol"], "metrics": meta["metrics"],
            "class_codes": meta["class_codes"], "class_names": meta["class_names"],
            "input_size": meta["input_size"], "preprocessing": meta["preprocessing"],
            "page_gate": {key: meta["page_gate"].get(key) for key in PAGE_GATE_CARD},
            "calibration": calibration_card(meta),
        }).data)


def _explain_flag(value: str | None) -> bool:
    value = (value or "1").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(status.HTTP_400_BAD_REQUEST, "invalid_parameter",
                   f"explain must be 1 or 0 (true or false), not {value[:20]!r}.")


class ClassificationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                            mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Upload an ECG image to classify it; list, fetch and delete your
    classifications, their stored images and heat maps. Users with the
    permission ``view_all_classifications`` (the "auditor" group, superusers)
    read everyone's; deleting another user's record needs ``delete_classification``."""

    serializer_class = ClassificationSerializer
    parser_classes = [MultiPartParser]

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.action == "create":
            throttles.append(UploadRateThrottle())
        return throttles

    def get_queryset(self):
        records = Classification.objects.select_related("user")
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return records.none()
        user = self.request.user
        return records if user.has_perm(VIEW_ALL) else records.filter(user=user)

    def get_object(self) -> Classification:
        record = super().get_object()
        self.request._request.audit_record = (record.pk, record.user.get_username())
        return record

    @extend_schema(responses={204: None, **_errors(401, 403, 404)})
    def destroy(self, request, *args, **kwargs):
        """Delete the record with its stored image and heat map (owner, or a user
        with the ``delete_classification`` permission)."""
        services.delete_classification(self.get_object(), request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        parameters=[OpenApiParameter("explain", OpenApiTypes.BOOL, default=True,
                                     description="0: skip the Grad-CAM heat map (faster)")],
        responses={201: ClassificationCreatedSerializer, **_errors(400, 401, 403, 413, 422, 429, 503)})
    def create(self, request):
        # (no docstring: the view set's stands for this operation in the OpenAPI schema)
        started = time.perf_counter()
        request.META[UPLOAD_MARK] = True  # counts towards the worker's ECGWEB_MAX_UPLOADS
        explain = _explain_flag(request.query_params.get("explain"))
        form = UploadSerializer(data=request.data)
        if not form.is_valid():  # no file in the field 'image' (or text in its place)
            raise ApiError(status.HTTP_400_BAD_REQUEST, "missing_file",
                           "No image was sent. Send the ECG image as multipart/form-data in the "
                           "field 'image'.")
        upload = services.receive_upload(form.validated_data["image"])
        request._request.upload_sha256 = upload.sha256  # for the audit log
        made = services.classify_upload(request.user, upload, explain=explain, started=started)
        request._request.audit_record = (made.record.pk, request.user.get_username())
        body = ClassificationCreatedSerializer(made.record, context={"heatmap_png": made.heatmap_png}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def _stored_file(self, field) -> FileResponse:
        extension = field.name.rsplit(".", 1)[-1]
        response = FileResponse(field.open("rb"), content_type=CONTENT_TYPES[extension])
        response["Cache-Control"] = "no-store"  # patient data: not in any cache after sign-out
        return response

    @extend_schema(responses={(200, "image/*"): OpenApiTypes.BINARY, **_errors(401, 404)})
    @action(detail=True, methods=["get"])
    def image(self, request, pk=None):
        """The uploaded image, as stored (no metadata; header band blank if configured)."""
        return self._stored_file(self.get_object().image)

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY, **_errors(401, 404)})
    @action(detail=True, methods=["get"])
    def heatmap(self, request, pk=None):
        """The Grad-CAM overlay (on the preprocessed image the model saw)."""
        record = self.get_object()
        if not record.heatmap:
            raise ApiError(status.HTTP_404_NOT_FOUND, "not_found",
                           "This classification was made without a heat map (explain=0).")
        return self._stored_file(record.heatmap)


_FRONTEND_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ECG classifier: front end not built</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The front end is not built yet</h1>
<p>Build it once, then restart the server:</p>
<pre>cd webapp/frontend &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>The API works without it: <a href="/api/v1/docs/">/api/v1/docs/</a>.</p>
</body></html>
"""


def frontend_index(request):
    """The React page (any non-API path, for client-side routes), or how to build it."""
    index = settings.FRONTEND_DIST / "index.html"
    if not index.is_file():
        return HttpResponse(_FRONTEND_MISSING)
    response = FileResponse(open(index, "rb"), content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
