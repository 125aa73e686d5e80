"""Who the client is and how often it may ask (paper section 5.3: authentication,
role-based access): throttles keyed on what an attacker cannot rotate, tokens
that expire (revoked by a password change), the admin login behind the same
login throttles (per name and address, per account, per address).

Issue 22: the counters are rows in the database (``models.ThrottleHit``), written
with single committed statements so that simultaneous requests on any worker or
instance never exceed a limit, never culled, and a database error refuses the
request (503 ``throttle_unavailable``) instead of letting it through. Once one
throttle refused a request, the others count nothing more. The client's address
is the socket's peer, or behind the proxies of ``ECGWEB_PROXY`` the nearest
address they did not add; IPv6 clients are counted per /64.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import random
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework import exceptions, throttling
from rest_framework.authentication import TokenAuthentication

log = logging.getLogger("classifier")

#: headers a reverse proxy adds; seen while ECGWEB_PROXY is unset, they stop the request
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
#: one request in this many also deletes every expired counter row
SWEEP_EVERY = 200


def _address(text: str | None):
    """``text`` as an ``ipaddress`` address (IPv4-mapped IPv6 as IPv4), None if it is none."""
    text = (text or "").strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def _trusted(ip) -> bool:
    return any(ip in network for network in settings.ECGWEB_TRUSTED_PROXIES)


def client_address(request):
    """The client's address (an ``ipaddress`` object, None without one): the socket's
    peer; when that peer is one of the trusted proxies (``ECGWEB_PROXY``), the
    ``X-Forwarded-For`` entries are read from the right, past the trusted proxies, and
    the first other address is the client (an entry that is no address stops the walk
    at the last trusted hop). A client that reaches the server directly cannot choose
    its address."""
    ip = _address(request.META.get("REMOTE_ADDR"))
    if ip is None or not _trusted(ip):
        return ip
    for item in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = _address(item)
        if hop is None:
            break
        ip = hop
        if not _trusted(hop):
            break
    return ip


def client_ip(request) -> str:
    """:func:`client_address` as text (what the audit log records; never a header's raw text)."""
    ip = client_address(request)
    return "unknown" if ip is None else str(ip)


def client_key(request) -> str:
    """The throttles' key for the client's address: IPv6 per /64 (one home or host gets a
    /64 and can rotate addresses within it), IPv4 per address."""
    ip = client_address(request)
    if ip is None:
        return "unknown"
    return str(ipaddress.ip_network((ip, 64), strict=False)) if ip.version == 6 else str(ip)


class ThrottleUnavailable(exceptions.APIException):
    """The counters cannot be written: the request is refused (fail closed)."""

    status_code = 503
    default_code = "throttle_unavailable"
    default_detail = ("The request limits cannot be checked right now (the server log has the "
                      "details), so the request was refused. Try again in a minute.")


def count_hit(key: str, limit: int, duration: float, now: float) -> float | None:
    """Count one request against ``limit`` per ``duration`` seconds for ``key``: None when
    it is allowed, else the seconds until a slot frees (the refused hit is deleted again).

    Insert, then count: each statement commits on its own, so of two simultaneous requests
    the later count sees both, and a limit is never exceeded (at a limit's edge both may be
    refused). Raises ``DatabaseError`` when the counters cannot be written or read."""
    from .models import ThrottleHit

    hits = ThrottleHit.objects
    mine = hits.create(key=key, expires=now + duration)
    live = hits.filter(key=key, expires__gt=now)
    if live.count() <= limit:
        if random.randrange(SWEEP_EVERY) == 0:
            hits.filter(expires__lte=now).delete()
        return None
    mine.delete()
    oldest = live.order_by("expires").values_list("expires", flat=True).first()
    return max(0.0, (oldest or now + duration) - now)


class CountedThrottle(throttling.SimpleRateThrottle):
    """DRF's rate throttle with its counting in :func:`count_hit`. On refusal the limit is
    noted on the request (for the error message), and later throttles count nothing."""

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        target = getattr(request, "_request", request)
        if getattr(target, "throttle_limit", None) is not None:
            return True  # another throttle refused it already: write nothing more
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        try:
            self._wait = count_hit(self.key, self.num_requests, self.duration, time.time())
        except DatabaseError as exc:
            log.error("throttle counters unavailable, request refused: %s: %s",
                      type(exc).__name__, exc)
            raise ThrottleUnavailable() from None
        if self._wait is None:
            return True
        target.throttle_limit = (self.rate, self.describe())
        return False

    def wait(self):
        return getattr(self, "_wait", None)

    def get_ident(self, request) -> str:
        return client_key(request)

    def describe(self) -> str:
        raise NotImplementedError


class UserRateThrottle(CountedThrottle, throttling.UserRateThrottle):
    """Every API request: ``ECGWEB_THROTTLE_USER`` per user (per client address
    for anonymous requests)."""

    def describe(self) -> str:
        return "per user"


class UploadRateThrottle(CountedThrottle, throttling.UserRateThrottle):
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


class LoginRateThrottle(CountedThrottle):
    """Password guesses: ``ECGWEB_THROTTLE_LOGIN`` per (account, client address),
    for the API's and the admin's login alike. Rotating ``X-Forwarded-For`` does not
    help (the address is the socket's, or the proxy's view of it)."""

    scope = "login"

    def get_cache_key(self, request, view):
        ident = f"{_hashed(_attempted_account(request))}:{client_key(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def describe(self) -> str:
        return "login attempts per user name and address"


class LoginAccountRateThrottle(CountedThrottle):
    """``ECGWEB_THROTTLE_LOGIN_ACCOUNT`` login attempts per account from all addresses
    together (guessing one password from many addresses)."""

    scope = "login_account"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": _hashed(_attempted_account(request))}

    def describe(self) -> str:
        return "login attempts per account"


class LoginAddressRateThrottle(CountedThrottle):
    """``ECGWEB_THROTTLE_LOGIN_ADDRESS`` login attempts per client address for all user
    names together (one address trying many accounts)."""

    scope = "login_address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": client_key(request)}

    def describe(self) -> str:
        return "login attempts per client address"


#: every login (API and admin) counts against all three, the widest key first: an address
#: that has spent its budget writes no counter for each new user name it tries
LOGIN_THROTTLES = [LoginAddressRateThrottle, LoginAccountRateThrottle, LoginRateThrottle]


def throttled_admin_login(login_view):
    """Wrap the admin's login view: its POSTs count against :data:`LOGIN_THROTTLES`
    and get a 429 page beyond a limit (Django's admin has no throttle of its own)."""

    def view(request: HttpRequest, *args, **kwargs):
        if request.method == "POST":
            # as in DRF's APIView.check_throttles: after a refusal the others count nothing
            throttles = [cls() for cls in LOGIN_THROTTLES]
            try:
                refused = [t for t in throttles if not t.allow_request(request, None)]
            except ThrottleUnavailable as exc:
                return HttpResponse("<!doctype html><title>Unavailable</title><h1>Login is "
                                    f"unavailable</h1><p>{exc.detail}</p>", status=503)
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
