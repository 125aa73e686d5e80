"""Who the client is and how often it may ask (paper section 5.3: authentication,
role-based access): throttles keyed on what an attacker cannot rotate, tokens
that expire, the admin login behind the same login throttle.

DRF's throttles do the counting (in the shared database cache); the subclasses
here only choose the keys and remember which limit was hit, for the message.
"""
from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework import exceptions, throttling
from rest_framework.authentication import TokenAuthentication

#: a throttle only for its get_ident (DRF's reading of REMOTE_ADDR and X-Forwarded-For)
_IDENT = throttling.BaseThrottle()


def client_ip(request) -> str:
    """The client's address as DRF's throttles see it: the socket's peer, or with
    ``NUM_PROXIES`` (``ECGWEB_NUM_PROXIES``) proxies the address the nearest of them
    saw (never a value the client chose)."""
    return _IDENT.get_ident(request)


class _RememberRate:
    """Mixin: on refusal, note the limit on the request for the error message."""

    def allow_request(self, request, view):
        allowed = super().allow_request(request, view)
        if not allowed:
            target = getattr(request, "_request", request)
            target.throttle_limit = (self.rate, self.describe())
        return allowed

    def describe(self) -> str:
        raise NotImplementedError


class UserRateThrottle(_RememberRate, throttling.UserRateThrottle):
    """Every API request: ``ECGWEB_THROTTLE_USER`` per user (per client address
    for anonymous requests)."""

    def describe(self) -> str:
        return "per user"


class UploadRateThrottle(_RememberRate, throttling.UserRateThrottle):
    """Uploads (the costly requests): ``ECGWEB_THROTTLE_UPLOAD`` per user, on top of
    the general limit. Applied by the classification view to POST only."""

    scope = "upload"

    def describe(self) -> str:
        return "uploads per user"


def _attempted_username(request) -> str:
    data = getattr(request, "data", None)  # DRF request (JSON body)
    if data is None:
        data = request.POST  # the admin's login form
    try:
        name = data.get("username", "")
    except AttributeError:  # a JSON body that is not an object
        name = ""
    return str(name)[:150].strip().lower()


class LoginRateThrottle(_RememberRate, throttling.SimpleRateThrottle):
    """Password guesses: ``ECGWEB_THROTTLE_LOGIN`` per (user name, client address),
    for the API's and the admin's login alike. Rotating ``X-Forwarded-For`` does not
    help (the address is the socket's, or the proxy's view of it); neither does
    rotating the user name against one account from one address, because each
    name has its own budget but guessing one password needs many tries per name."""

    scope = "login"

    def get_cache_key(self, request, view):
        who = hashlib.sha256(_attempted_username(request).encode()).hexdigest()[:32]
        return self.cache_format % {"scope": self.scope, "ident": f"{who}:{client_ip(request)}"}

    def describe(self) -> str:
        return "login attempts per user name and address"


def throttled_admin_login(login_view):
    """Wrap the admin's login view: its POSTs count against :class:`LoginRateThrottle`
    and get a 429 page beyond the limit (Django's admin has no throttle of its own)."""

    def view(request: HttpRequest, *args, **kwargs):
        if request.method == "POST":
            throttle = LoginRateThrottle()
            if not throttle.allow_request(request, None):
                wait = throttle.wait()
                response = HttpResponse(
                    "<!doctype html><title>Too many attempts</title><h1>Too many login attempts</h1>"
                    f"<p>Wait {int(wait or 60) + 1} seconds, then try again.</p>", status=429)
                response["Retry-After"] = str(int(wait or 60) + 1)
                return response
        return login_view(request, *args, **kwargs)

    return view


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, with tokens that stop working
    ``ECGWEB_TOKEN_TTL_HOURS`` after they were made."""

    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        ttl = dt.timedelta(hours=settings.ECGWEB_TOKEN_TTL_HOURS)
        if ttl and timezone.now() - token.created > ttl:
            raise exceptions.AuthenticationFailed(
                f"This token expired (tokens last {settings.ECGWEB_TOKEN_TTL_HOURS:g} hours). "
                "Ask an administrator for a new one (manage.py drf_create_token -r <user>).")
        return user, token
