"""Django admin: browse classifications (read-only; they are made through the API)
and delete them; the stored files go too (classifier.signals)."""
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from .models import Classification


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
