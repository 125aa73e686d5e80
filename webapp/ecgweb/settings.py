"""Settings of the ecgpaper web service (paper section 3.4), all from the environment.

Secure by default: DEBUG off, a secret key that is never hard-coded, every API
endpoint but health, CSRF and login needs a logged-in user or a token,
per-user throttling. State lives in ``results/webapp/`` (``ECGPAPER_ROOT``
moves it): the SQLite database, the uploads, the generated secret key and the
audit log. The variables are listed in webapp/README.md.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from ecgpaper import __version__, paths


def _env_flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


WEBAPP_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = paths.RESULTS / "webapp"
STATE_DIR.mkdir(parents=True, exist_ok=True)


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
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

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
    "classifier",
]

MIDDLEWARE = [
    "classifier.middleware.AuditLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "classifier.middleware.UploadSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
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
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                    "transaction_mode": "IMMEDIATE", "timeout": 20},
    }}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# throttling counters must be shared by every worker and instance: keep them in the database
CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                      "LOCATION": "ecgweb_cache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
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

ECGWEB_MODELS_DIR = Path(os.environ.get("ECGWEB_MODELS_DIR", paths.MODELS))
ECGWEB_MAX_UPLOAD_BYTES = int(float(os.environ.get("ECGWEB_MAX_UPLOAD_MB", "20")) * 2**20)
ECGWEB_MAX_PIXELS = int(float(os.environ.get("ECGWEB_MAX_MEGAPIXELS", "40")) * 1e6)
# uploads up to the limit stay in memory (one read, no temporary file); other fields stay small
FILE_UPLOAD_MAX_MEMORY_SIZE = ECGWEB_MAX_UPLOAD_BYTES
DATA_UPLOAD_MAX_MEMORY_SIZE = 1 * 2**20
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
DATA_UPLOAD_MAX_NUMBER_FILES = 1

# --- the API --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",  # first: anonymous -> 401
        "rest_framework.authentication.SessionAuthentication",  # enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": os.environ.get("ECGWEB_THROTTLE_USER", "120/min")},
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
}

# --- logging: one audit line per request, to results/webapp/audit.log and stderr --------
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
    },
}
