"""Django admin: browse classifications (read-only; they are made through the API)."""
from django.contrib import admin

from .models import Classification


@admin.register(Classification)
class ClassificationAdmin(admin.ModelAdmin):
    list_display = ("id", "created", "user", "filename", "class_code", "model_run_id", "total_ms")
    list_filter = ("class_code", "model_run_id")
    search_fields = ("filename", "sha256", "user__username")
    readonly_fields = [f.name for f in Classification._meta.fields]

    def has_add_permission(self, request):
        return False
