"""Root URLs: the API under /api/v1/, the admin (its login throttled), and the
React page everywhere else (its assets are under /static/, served by whitenoise)."""
from django.contrib import admin
from django.urls import include, path, re_path

from classifier.security import throttled_admin_login
from classifier.views import frontend_index

urlpatterns = [
    path("api/v1/", include("classifier.urls")),
    # before admin.site.urls: the admin's login, behind the API's login throttle
    path("admin/login/", throttled_admin_login(admin.site.login), name="admin-login-throttled"),
    path("admin/", admin.site.urls),
    re_path(r"^(?!api/|admin/|static/).*$", frontend_index, name="frontend"),
]

handler400 = "classifier.errors.bad_request"
handler404 = "classifier.errors.not_found"
handler500 = "classifier.errors.server_error"
