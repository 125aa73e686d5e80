"""Settings of the ecgpaper web service (paper section 3.4), all from the environment.

Secure by default: DEBUG off, a secret key that is never hard-coded, every API
endpoint but health, readiness, CSRF and login needs a logged-in user or a token
(tokens expire), per-user throttling with stricter limits on logins and
uploads, a Content-Security-Policy. Patient data (paper section 5.3) lives in
its own state folder, ``ECGWEB_STATE_DIR`` (default ``var/webapp/`` of the
project root, outside ``results/`` and its shareable outputs), mode 0700 with
files 0600: the SQLite database, the uploads, the generated secret key and the
audit log. The variables are listed in webapp/README.md.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from ecgpaper import __version__, paths


def _env_flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by this user only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


# every file this process makes (database, uploads, audit log) is readable by its user only
os.umask(0o077)
WEBAPP_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = _private_dir(Path(os.environ.get("ECGWEB_STATE_DIR", paths.ROOT / "var" / "webapp")))


def _secret_key(path: Path) -> str:
    """``ECGWEB_SECRET_KEY``, else a random key generated once into ``path``
    (mode 600), so a fresh clone runs and restarts keep sessions valid."""
    if os.environ.get("ECGWEB_SECRET_KEY"):
        return os.environ["ECGWEB_SECRET_KEY"]
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
        try:
            os.link(tmp, path)  # atomic; another process may have won the race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


SECRET_KEY = _secret_key(STATE_DIR / "secret_key")
DEBUG = _env_flag("ECGWEB_DEBUG")
ALLOWED_HOSTS = _env_list("ECGWEB_ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = _env_list("ECGWEB_CSRF_TRUSTED_ORIGINS", "")

if _env_flag("ECGWEB_HTTPS"):  # TLS ends at a reverse proxy that sets X-Forwarded-Proto
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # the proxy redirects http to https and sends HSTS (webapp/README.md's nginx snippet)
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008"]
SESSION_COOKIE_SAMESITE = "Lax"
#: a shared workstation: a session ends after this many idle minutes (every request renews
#: it, SESSION_SAVE_EVERY_REQUEST) and when the browser closes (the cookie has no Max-Age)
SESSION_COOKIE_AGE = max(1, round(float(os.environ.get("ECGWEB_SESSION_IDLE_MINUTES", "30")) * 60))
SESSION_SAVE_EVERY_REQUEST = _env_flag("ECGWEB_SESSION_SAVE_EVERY_REQUEST", default=True)
SESSION_EXPIRE_AT_BROWSER_CLOSE = _env_flag("ECGWEB_SESSION_EXPIRE_AT_BROWSER_CLOSE", default=True)
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
#: sent on every response (classifier.middleware.ContentSecurityPolicyMiddleware): scripts
#: and styles from this origin only (Vite's build, the admin and the local Swagger UI have
#: no inline script); images may be data:/blob: URLs (the heat map, the upload preview).
#: Swagger UI and the admin set some inline styles.
ECGWEB_CSP = os.environ.get("ECGWEB_CSP", "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:", "font-src 'self'", "connect-src 'self'", "object-src 'none'",
    "base-uri 'self'", "form-action 'self'", "frame-ancestors 'none'"]))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's scripts served from here, not from a CDN
    "classifier",
]

MIDDLEWARE = [
    "classifier.middleware.AuditLogMiddleware",
    "classifier.middleware.ProxyConfiguredMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "classifier.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # after authentication (lazy, reads no body) so that the audit log names who was refused
    "classifier.middleware.UploadSizeLimitMiddleware",
    "classifier.middleware.NoStoreApiMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ecgweb.urls"
WSGI_APPLICATION = "ecgweb.wsgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

# --- database: PostgreSQL when DATABASE_URL is set, else SQLite ---------------
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60,
                                                  conn_health_checks=True)}
else:
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("ECGWEB_SQLITE_PATH", str(STATE_DIR / "db.sqlite3")),
        # several gunicorn workers write to one file: WAL, and wait for the lock
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                                    "PRAGMA secure_delete=ON;",  # deleted records: overwritten
                    "transaction_mode": "IMMEDIATE", "timeout": 20},
    }}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# throttling counters must be shared by every worker and instance: rows of the database
# (classifier.models.ThrottleHit, issue 22), never a cache that culls or ignores errors.
# On SQLite they get a file of their own (classifier.routers.ThrottleCacheRouter), so that
# counting requests never takes the write lock of the database that holds the records.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["throttle"] = {**DATABASES["default"],
                             "NAME": str(Path(DATABASES["default"]["NAME"]).with_name("throttle.sqlite3"))}
    DATABASE_ROUTERS = ["classifier.routers.ThrottleCacheRouter"]


def _proxy_setting() -> tuple[str | None, tuple]:
    """``ECGWEB_PROXY``: unset (None: requests carrying forwarding headers are refused),
    ``direct`` (clients reach gunicorn themselves; X-Forwarded-For is ignored) or the
    comma-separated addresses/networks of the reverse proxies in front (their
    X-Forwarded-For entries are read; nobody else's). Issue 22, finding 3."""
    if os.environ.get("ECGWEB_NUM_PROXIES"):
        raise ImproperlyConfigured(
            "ECGWEB_NUM_PROXIES is replaced by ECGWEB_PROXY: set ECGWEB_PROXY=direct, or to the "
            "addresses of the reverse proxies in front (e.g. ECGWEB_PROXY=127.0.0.1 for nginx on "
            "this host), and unset ECGWEB_NUM_PROXIES (webapp/README.md, Deployment).")
    value = os.environ.get("ECGWEB_PROXY", "").strip()
    if not value:
        return None, ()
    if value.lower() == "direct":
        return "direct", ()
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"ECGWEB_PROXY: {item.strip()!r} is not an address or network; set it to 'direct' "
                "or to the reverse proxies' addresses, comma-separated (e.g. 127.0.0.1,10.0.0.0/24)."
            ) from None
    return "proxy", tuple(networks)


ECGWEB_PROXY_MODE, ECGWEB_TRUSTED_PROXIES = _proxy_setting()

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    # not a check: Django's hook after a password change, revoking the user's API tokens
    {"NAME": "classifier.security.RevokeTokensOnPasswordChange"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- files --------------------------------------------------------------------
#: the React build (webapp/frontend/dist, Vite ``base: "/static/"``), served at / and /static/
FRONTEND_DIST = Path(os.environ.get("ECGWEB_FRONTEND_DIST", WEBAPP_DIR / "frontend" / "dist"))
STATIC_URL = "/static/"
STATIC_ROOT = STATE_DIR / "static"
STATICFILES_DIRS = [FRONTEND_DIST] if FRONTEND_DIST.is_dir() else []
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
#: Vite names its bundles assets/<name>-<hash>.<ext>: cache them forever
WHITENOISE_IMMUTABLE_FILE_TEST = r"^.+/assets/.+-[A-Za-z0-9_-]{8,}\.[a-z0-9]+$"
MEDIA_ROOT = Path(os.environ.get("ECGWEB_MEDIA_ROOT", STATE_DIR / "uploads"))
MEDIA_URL = None  # uploads are served only through the API, with its permission checks
FILE_UPLOAD_PERMISSIONS = 0o600  # patient data: this user only
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
def _header_band() -> str:
    """``ECGWEB_HEADER_BAND``: what the stored copy keeps of the header band, where ECG
    carts print the patient's name and id: ``crop`` (default: cut off), ``blank`` (painted
    white, the page keeps its size) or ``keep``. The older ``ECGWEB_BLANK_HEADER=1`` means
    ``blank``."""
    value = os.environ.get("ECGWEB_HEADER_BAND", "").strip().lower()
    if not value:
        return "blank" if _env_flag("ECGWEB_BLANK_HEADER") else "crop"
    if value not in ("crop", "blank", "keep"):
        raise ImproperlyConfigured(f"ECGWEB_HEADER_BAND={value!r}: use crop, blank or keep")
    return value


#: patient data, privacy first (issue 22, finding 5): the header band is not stored ...
ECGWEB_HEADER_BAND = _header_band()
#: ... nor the uploaded file's name (it may name the patient) unless 1: "upload.<ext>"
ECGWEB_KEEP_FILENAMES = _env_flag("ECGWEB_KEEP_FILENAMES", default=False)
#: records older than this many days are removed by `manage.py purge_classifications` (0: keep)
ECGWEB_RETENTION_DAYS = float(os.environ.get("ECGWEB_RETENTION_DAYS", "0"))
#: API tokens stop working this many hours after they were made (drf_create_token -r renews)
ECGWEB_TOKEN_TTL_HOURS = float(os.environ.get("ECGWEB_TOKEN_TTL_HOURS", str(7 * 24)))

ECGWEB_MODELS_DIR = Path(os.environ.get("ECGWEB_MODELS_DIR", paths.MODELS))
ECGWEB_MAX_UPLOAD_BYTES = int(float(os.environ.get("ECGWEB_MAX_UPLOAD_MB", "20")) * 2**20)
ECGWEB_MAX_PIXELS = int(float(os.environ.get("ECGWEB_MAX_MEGAPIXELS", "25")) * 1e6)
# uploads up to the limit stay in memory (one read, no temporary file); other fields stay small
FILE_UPLOAD_MAX_MEMORY_SIZE = ECGWEB_MAX_UPLOAD_BYTES
DATA_UPLOAD_MAX_MEMORY_SIZE = 1 * 2**20
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
DATA_UPLOAD_MAX_NUMBER_FILES = 1

# --- the API --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "classifier.security.ExpiringTokenAuthentication",  # first: anonymous -> 401
        "rest_framework.authentication.SessionAuthentication",  # enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["classifier.security.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": os.environ.get("ECGWEB_THROTTLE_USER", "120/min"),  # per user (anonymous: per IP)
        "login": os.environ.get("ECGWEB_THROTTLE_LOGIN", "5/min"),  # per user name + client IP
        "login_account": os.environ.get("ECGWEB_THROTTLE_LOGIN_ACCOUNT", "30/hour"),  # any address
        "login_address": os.environ.get("ECGWEB_THROTTLE_LOGIN_ADDRESS", "20/min"),  # any user name
        "upload": os.environ.get("ECGWEB_THROTTLE_UPLOAD", "30/min"),  # uploads per user
    },
    # (the client's address: classifier.security.client_address, from ECGWEB_PROXY)
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "classifier.errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ecgpaper ECG classification API",
    "DESCRIPTION": (
        "Classify a 12-lead ECG report image into myocardial infarction, history of MI, "
        "abnormal heartbeat or normal (paper section 3.4), with a Grad-CAM heat map "
        "(section 5.2). Errors are always {\"error\": code, \"detail\": sentence}. "
        "A research prototype, not a medical device."),
    "VERSION": __version__,
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",  # local copies (drf-spectacular-sidecar), no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- logging: one audit line per request, to <state>/audit.log and stderr; errors to stderr --
AUDIT_LOG = Path(os.environ.get("ECGWEB_AUDIT_LOG", STATE_DIR / "audit.log"))
AUDIT_LOG.parent.mkdir(parents=True, exist_ok=True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
        # WatchedFileHandler: several workers append to one file; logrotate-safe
        "audit_file": {"class": "logging.handlers.WatchedFileHandler", "formatter": "plain",
                       "filename": str(AUDIT_LOG)},
    },
    "loggers": {
        "ecgweb.audit": {"handlers": ["audit_file", "stderr"], "level": "INFO", "propagate": False},
        "classifier": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "ecgpaper": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        # 5xx with their tracebacks: with DEBUG off, Django's default only mails them to
        # ADMINS (none here). (Its 4xx warnings are left out: the audit log has those.)
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}
