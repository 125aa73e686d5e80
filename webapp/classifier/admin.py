"""Django admin: browse classifications (read-only; they are made through the API)
and delete them; the stored files go too (classifier.signals).

Issue 22, finding 5: records are listed and shown only to holders of
``view_all_classifications`` (the auditor role), and each record page shown goes to
the audit log with its owner, as in the API; Django's stock ``view_classification``
alone shows nothing. API tokens are listed by user with their first characters only.
"""
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.urls import reverse
from django.utils.html import format_html
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from .models import Classification

#: the permission that lets a user read every user's records (views.VIEW_ALL)
VIEW_ALL = "classifier.view_all_classifications"


@admin.register(Classification)
class ClassificationAdmin(admin.ModelAdmin):
    list_display = ("id", "created", "user", "filename", "class_code", "model_run_id", "total_ms")
    list_filter = ("class_code", "model_run_id")
    search_fields = ("filename", "sha256", "user__username")
    # the files are shown as links to the API (which checks permissions), not as FileFields:
    # MEDIA_URL is None, so a FileField has no URL of its own
    exclude = ("image", "heatmap")
    readonly_fields = [f.name for f in Classification._meta.fields
                       if f.name not in ("image", "heatmap")] + ["stored_image", "stored_heatmap"]

    def has_add_permission(self, request):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(VIEW_ALL)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(VIEW_ALL) and super().has_change_permission(request, obj)

    def has_module_permission(self, request):
        return request.user.has_perm(VIEW_ALL)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = self.get_object(request, unquote(object_id))
        if record is not None:  # the audit log: which record, whose (classifier.middleware)
            request.audit_record = (record.pk, record.user.get_username())
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="image")
    def stored_image(self, obj: Classification) -> str:
        url = reverse("classification-image", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description="heat map")
    def stored_heatmap(self, obj: Classification) -> str:
        if not obj.heatmap:
            return "none (classified with explain=0)"
        url = reverse("classification-heatmap", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, url)


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class MaskedTokenAdmin(TokenAdmin):
    """DRF's token admin without the keys in plain text: a token is a password."""

    list_display = ("masked_key", "user", "created")
    fields = ("user",)
    search_fields = ("user__username",)

    @admin.display(description="key")
    def masked_key(self, obj) -> str:
        return f"{obj.key[:4]}…"

    def has_change_permission(self, request, obj=None):
        return False  # a token is made (or replaced) with manage.py drf_create_token
