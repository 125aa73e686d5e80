"""Who the client is and how often it may ask (paper section 5.3: authentication,
role-based access): throttles keyed on what an attacker cannot rotate, tokens
that expire (revoked by a password change), the admin login behind the same
login throttles (per name and address, per account, per address).

DRF's throttles do the counting (in the shared database cache); the subclasses
here only choose the keys and remember which limit was hit, for the message.
"""
from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model
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


def login_username(name) -> str:
    """The user name Django authenticates for ``name``: stripped (as DRF's and Django's
    form fields do) and NFKC-normalised (``AbstractBaseUser.normalize_username``, as
    the admin's login form and ``create_user`` do)."""
    return get_user_model().normalize_username(str(name).strip())


def _attempted_account(request) -> str:
    """The account a login attempt is for, as its throttle key: :func:`login_username`,
    casefolded. Padding (DRF strips before checking ``max_length``), NFKC variants
    (``ａdmin``) and case give no new bucket."""
    data = getattr(request, "data", None)  # DRF request (JSON body)
    if data is None:
        data = request.POST  # the admin's login form
    try:
        name = data.get("username", "")
    except AttributeError:  # a JSON body that is not an object
        name = ""
    return login_username(name).casefold()


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginRateThrottle(_RememberRate, throttling.SimpleRateThrottle):
    """Password guesses: ``ECGWEB_THROTTLE_LOGIN`` per (account, client address),
    for the API's and the admin's login alike. Rotating ``X-Forwarded-For`` does not
    help (the address is the socket's, or the proxy's view of it)."""

    scope = "login"

    def get_cache_key(self, request, view):
        ident = f"{_hashed(_attempted_account(request))}:{client_ip(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def describe(self) -> str:
        return "login attempts per user name and address"


class LoginAccountRateThrottle(_RememberRate, throttling.SimpleRateThrottle):
    """``ECGWEB_THROTTLE_LOGIN_ACCOUNT`` login attempts per account from all addresses
    together (guessing one password from many addresses)."""

    scope = "login_account"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": _hashed(_attempted_account(request))}

    def describe(self) -> str:
        return "login attempts per account"


class LoginAddressRateThrottle(_RememberRate, throttling.SimpleRateThrottle):
    """``ECGWEB_THROTTLE_LOGIN_ADDRESS`` login attempts per client address for all user
    names together (one address trying many accounts)."""

    scope = "login_address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": client_ip(request)}

    def describe(self) -> str:
        return "login attempts per client address"


#: every login (API and admin) counts against all three
LOGIN_THROTTLES = [LoginRateThrottle, LoginAccountRateThrottle, LoginAddressRateThrottle]


def throttled_admin_login(login_view):
    """Wrap the admin's login view: its POSTs count against :data:`LOGIN_THROTTLES`
    and get a 429 page beyond a limit (Django's admin has no throttle of its own)."""

    def view(request: HttpRequest, *args, **kwargs):
        if request.method == "POST":
            # every throttle sees every attempt, as in DRF's APIView.check_throttles
            throttles = [cls() for cls in LOGIN_THROTTLES]
            refused = [t for t in throttles if not t.allow_request(request, None)]
            if refused:
                wait = max((t.wait() or 60) for t in refused)
                response = HttpResponse(
                    "<!doctype html><title>Too many attempts</title><h1>Too many login attempts</h1>"
                    f"<p>Wait {int(wait) + 1} seconds, then try again.</p>", status=429)
                response["Retry-After"] = str(int(wait) + 1)
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


class RevokeTokensOnPasswordChange:
    """Delete a user's API tokens when their password changes (sessions already end:
    Django checks the password hash they were made with).

    A password validator that checks nothing: Django has no password-changed signal,
    and ``password_changed`` is its documented hook, called by ``AbstractBaseUser.save()``
    after ``set_password`` (the admin's forms, ``changepassword``), not for the hash
    upgrades made at login."""

    def validate(self, password, user=None) -> None:
        return None

    def password_changed(self, password, user=None) -> None:
        if user is not None and user.pk is not None:
            from rest_framework.authtoken.models import Token

            Token.objects.filter(user=user).delete()

    def get_help_text(self) -> str:
        return "Changing the password revokes the API tokens of this account."
