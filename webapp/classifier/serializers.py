"""Serializers of the API (DRF tutorial layout): classifications, the model
card, login, and the shapes documented in the OpenAPI schema."""
from __future__ import annotations

import base64

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Classification
from .security import login_username


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="short machine-readable code, e.g. invalid_image")
    detail = serializers.CharField(help_text="what was wrong and what to do")


class ProbabilitySerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    probability = serializers.FloatField()


class ModelSummarySerializer(serializers.Serializer):
    name = serializers.CharField(help_text="backbone, e.g. VGG16")
    run_id = serializers.CharField()
    version = serializers.CharField(help_text="ecgpaper version that exported the model")
    dataset = serializers.CharField()
    synthetic = serializers.BooleanField(help_text="trained on the synthetic twin, not real ECGs")


class ClassificationSerializer(serializers.ModelSerializer):
    class_name = serializers.CharField(source="result.class_name", read_only=True)
    probabilities = ProbabilitySerializer(source="result.probabilities", many=True, read_only=True,
                                          help_text="one entry per class, in the model's class order")
    model = ModelSummarySerializer(source="result.model", read_only=True)
    image_url = serializers.SerializerMethodField()
    heatmap_url = serializers.SerializerMethodField()

    class Meta:
        model = Classification
        fields = ["id", "created", "filename", "sha256", "class_code", "class_name", "probabilities",
                  "model", "inference_ms", "total_ms", "image_url", "heatmap_url"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_image_url(self, obj: Classification) -> str:
        return reverse("classification-image", args=[obj.pk])

    @extend_schema_field(serializers.CharField(allow_null=True,
                                               help_text="null when classified with explain=0"))
    def get_heatmap_url(self, obj: Classification) -> str | None:
        return reverse("classification-heatmap", args=[obj.pk]) if obj.heatmap else None


class ClassificationCreatedSerializer(ClassificationSerializer):
    """The answer to an upload: the stored record plus the heat map inline."""

    #: from the context's "heatmap_png": the PNG bytes, or None without a heat map
    heatmap_png = serializers.SerializerMethodField()

    class Meta(ClassificationSerializer.Meta):
        fields = ClassificationSerializer.Meta.fields + ["heatmap_png"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(
        allow_null=True, help_text="data:image/png;base64,... Grad-CAM overlay; null with explain=0"))
    def get_heatmap_png(self, obj: Classification) -> str | None:
        png = self.context.get("heatmap_png")
        return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


class UploadSerializer(serializers.Serializer):
    #: an empty file passes here, to get decode_upload's own answer (empty_file)
    image = serializers.FileField(allow_empty_file=True, help_text="the ECG image: PNG, JPEG, WebP, TIFF, BMP or GIF "
                                            "(one frame), within the server's limits "
                                            "(default 20 MB, 40 megapixels)")


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, style={"input_type": "password"},
                                     trim_whitespace=False)

    def validate_username(self, value: str) -> str:
        """NFKC, as the admin's login form: both logins authenticate the same name."""
        return login_username(value)


class UserSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()
    model_loaded = serializers.BooleanField(help_text="this server process has loaded the model")


class CsrfSerializer(serializers.Serializer):
    csrfToken = serializers.CharField(help_text="send as the X-CSRFToken header with session auth")


class ModelInfoSerializer(serializers.Serializer):
    loaded = serializers.BooleanField()
    model = serializers.CharField()
    run_id = serializers.CharField()
    version = serializers.CharField()
    dataset = serializers.CharField()
    synthetic = serializers.BooleanField()
    profile = serializers.CharField()
    protocol = serializers.CharField()
    metrics = serializers.DictField(help_text="test-set accuracy, precision, recall, f1, ci95, n_test")
    class_codes = serializers.ListField(child=serializers.CharField())
    class_names = serializers.ListField(child=serializers.CharField())
    input_size = serializers.IntegerField()
    preprocessing = serializers.DictField(help_text="scaling, fit, crop, version")
    page_gate = serializers.DictField(help_text="the check before classification: what it rejects "
                                                "(HTTP 422 not_an_ecg), its threshold and calibration")
    calibration = serializers.DictField(help_text="whether the probabilities are calibrated: calibrated, "
                                                  "method (temperature scaling), temperature, fitted_on, "
                                                  "n_val, test ECE and Brier score before and after, and "
                                                  "the statement the page shows")
