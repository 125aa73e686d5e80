"""Root URLs: the API under /api/v1/, the admin, and the React page everywhere else
(its assets are under /static/, served by whitenoise)."""
from django.contrib import admin
from django.urls import include, path, re_path

from classifier.views import frontend_index

urlpatterns = [
    path("api/v1/", include("classifier.urls")),
    path("admin/", admin.site.urls),
    re_path(r"^(?!api/|admin/|static/).*$", frontend_index, name="frontend"),
]

handler400 = "classifier.errors.bad_request"
handler404 = "classifier.errors.not_found"
handler500 = "classifier.errors.server_error"
