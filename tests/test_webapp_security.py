"""Security review of the web service (issue 22, findings 1, 4 and 7), through real
HTTP against gunicorn (tests/support/server.py): login throttles that padding and
Unicode variants of a user name do not sidestep, with per-account and per-address
limits on the API's and the admin's login; sessions that end when idle or when the
browser closes, tokens revoked by a password change; server errors in the server's
log, and a readiness check that looks at the database, the upload folder and the
model's output.

The login server trusts one proxy (``ECGWEB_NUM_PROXIES=1``), so that each test
can speak from addresses of its own through ``X-Forwarded-For``.
"""
from __future__ import annotations

import io
import json
import re
import time

import pytest
import requests
from PIL import Image
from support.model import tiny_export
from support.server import API, LiveServer, password_for

pytestmark = pytest.mark.slow

#: sessions end after this many idle seconds on the login server
IDLE_S = 9


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    return body


def manage_json(srv: LiveServer, script: str):
    return json.loads(srv.manage("shell", "-c", script).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    """No model; 3 login attempts a minute per (name, address), 8 per account, 10 per
    address; sessions idle for IDLE_S seconds end; one proxy trusted."""
    root = tmp_path_factory.mktemp("login-server")
    env = {"ECGWEB_MODELS_DIR": str(root / "no-models"), "ECGWEB_NUM_PROXIES": "1",
           "ECGWEB_THROTTLE_LOGIN": "3/min", "ECGWEB_THROTTLE_LOGIN_ACCOUNT": "8/min",
           "ECGWEB_THROTTLE_LOGIN_ADDRESS": "10/min",
           "ECGWEB_SESSION_IDLE_MINUTES": str(IDLE_S / 60)}
    with LiveServer(root, env) as srv:
        srv.tokens = srv.create_users("alice", "bob", "carol", "dave", "erin")
        manage_json(srv, "import json; from django.contrib.auth import get_user_model; U = get_user_model(); "
                         "[U.objects.create_superuser(n, password=n + '-pw-1234') for n in "
                         "('root', 'boss', 'chief', 'keeper')]; print(json.dumps(1))")
        yield srv


class Login:
    """Login attempts at the API (``kind="api"``) or the admin's form, each from the
    client address given (``X-Forwarded-For``); ``attempt`` returns the status."""

    SUCCESS = {"api": 200, "admin": 302}
    FAILURE = {"api": 400, "admin": 200}  # the admin: its form again, with the error

    def __init__(self, srv: LiveServer, kind: str):
        self.srv, self.kind, self.session = srv, kind, requests.Session()
        if kind == "api":
            self.url = f"{srv.url}{API}/auth/login/"
            self.csrf = self.session.get(f"{srv.url}{API}/auth/csrf/", timeout=10).json()["csrfToken"]
        else:
            self.url = f"{srv.url}/admin/login/"
            page = self.session.get(self.url, timeout=10).text
            self.csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    def post(self, username: str, password: str, address: str) -> requests.Response:
        headers = {"Referer": self.url, "X-Forwarded-For": address}
        if self.kind == "api":
            return self.session.post(self.url, json={"username": username, "password": password},
                                     headers={**headers, "X-CSRFToken": self.csrf}, timeout=10)
        return self.session.post(self.url, data={"csrfmiddlewaretoken": self.csrf, "username": username,
                                                 "password": password, "next": "/admin/"},
                                 headers=headers, timeout=10, allow_redirects=False)

    def attempt(self, username: str, password: str, address: str) -> int:
        return self.post(username, password, address).status_code


# --------------------------------------------------------------------------
# finding 1: login throttles
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, account, address", [("api", "alice", "198.51.100.1"),
                                                    ("admin", "root", "198.51.100.2")])
def test_padded_and_unicode_variants_of_a_name_share_its_login_bucket(login_server, kind, account,
                                                                      address):
    login = Login(login_server, kind)
    bold = "".join(chr(0x1D41A + ord(c) - ord("a")) for c in account)  # MATHEMATICAL BOLD SMALL
    wide = "".join(chr(0xFF41 + ord(c) - ord("a")) for c in account)  # FULLWIDTH LATIN SMALL
    guesses = [" " * 146 + account, " " * 148 + account, wide]  # all authenticate as `account`
    assert [login.attempt(name, "wrong-guess", address) for name in guesses] == [login.FAILURE[kind]] * 3
    # the budget of (account, address) is spent, whichever spelling carries the right password
    for name in (" " * 150 + account, bold, wide.upper(), f" {account.upper()} "):
        r = login.post(name, password_for(account), address)
        assert r.status_code == 429, (name, r.status_code, r.text[:300])
    if kind == "api":
        assert "3/min login attempts per user name and address" in assert_error(r, 429, "throttled")["detail"]
    else:
        assert "Too many login attempts" in r.text and int(r.headers["Retry-After"]) > 0


@pytest.mark.parametrize("kind, account, first", [("api", "bob", 10), ("admin", "boss", 30)])
def test_one_account_has_a_limit_over_all_addresses(login_server, kind, account, first):
    login = Login(login_server, kind)
    answers = [login.attempt(account, f"guess-{i}", f"203.0.113.{first + i}") for i in range(8)]
    assert answers == [login.FAILURE[kind]] * 8  # a new address for each guess
    r = login.post(account, password_for(account), f"203.0.113.{first + 8}")
    assert r.status_code == 429, r.text[:300]
    if kind == "api":
        assert "8/min login attempts per account" in assert_error(r, 429, "throttled")["detail"]
    # another account is not locked out by it
    other = {"api": "erin", "admin": "chief"}[kind]
    assert login.attempt(other, password_for(other), f"203.0.113.{first + 9}") == login.SUCCESS[kind]


@pytest.mark.parametrize("kind, address", [("api", "192.0.2.10"), ("admin", "192.0.2.20")])
def test_one_address_has_a_limit_over_all_user_names(login_server, kind, address):
    login = Login(login_server, kind)
    answers = [login.attempt(f"ghost-{kind}-{i}", "guess", address) for i in range(10)]
    assert answers == [login.FAILURE[kind]] * 10  # a new user name for each guess
    r = login.post(f"ghost-{kind}-10", "guess", address)
    assert r.status_code == 429, r.text[:300]
    if kind == "api":
        assert "10/min login attempts per client address" in assert_error(r, 429, "throttled")["detail"]


# --------------------------------------------------------------------------
# finding 4: sessions and tokens on a shared workstation
# --------------------------------------------------------------------------

def api_session(srv: LiveServer, username: str, address: str) -> tuple[requests.Session, requests.Response]:
    login = Login(srv, "api")
    r = login.post(username, password_for(username), address)
    assert r.status_code == 200, r.text[:300]
    return login.session, r


def test_the_session_cookie_ends_when_the_browser_closes(login_server):
    s, r = api_session(login_server, "carol", "192.0.2.50")
    cookies = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith("sessionid=")]
    assert len(cookies) == 1
    assert "max-age" not in cookies[0].lower() and "expires" not in cookies[0].lower(), cookies[0]


def test_a_session_ends_when_idle(login_server):
    s, _ = api_session(login_server, "carol", "192.0.2.51")
    me = f"{login_server.url}{API}/auth/me/"
    for _ in range(3):  # requests within the idle time keep the session alive past it
        time.sleep(IDLE_S / 2)
        assert s.get(me, timeout=10).json() == {"username": "carol", "is_staff": False}
    time.sleep(IDLE_S + 2)
    assert_error(s.get(me, timeout=10), 403, "not_authenticated")
    assert_error(s.get(f"{login_server.url}{API}/classifications/", timeout=10), 401, "not_authenticated")


def test_changing_the_password_revokes_the_users_api_tokens(login_server):
    srv = login_server
    dave, bob = srv.tokens["dave"], srv.tokens["bob"]
    assert srv.get(f"{API}/auth/me/", token=dave).json()["username"] == "dave"
    dave_id = manage_json(srv, "import json; from django.contrib.auth import get_user_model; "
                               "print(json.dumps(get_user_model().objects.get(username='dave').pk))")
    # a superuser changes dave's password in the admin
    admin = Login(srv, "admin")
    assert admin.attempt("keeper", password_for("keeper"), "192.0.2.60") == 302
    url = f"{srv.url}/admin/auth/user/{dave_id}/password/"
    page = admin.session.get(url, timeout=10)
    assert page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = admin.session.post(url, data={"csrfmiddlewaretoken": csrf, "password1": "a new long passphrase 42",
                                      "password2": "a new long passphrase 42"},
                           headers={"Referer": url}, timeout=10, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    assert_error(srv.get(f"{API}/auth/me/", token=dave), 401, "authentication_failed")
    assert_error(srv.get(f"{API}/classifications/", token=dave), 401, "authentication_failed")
    assert srv.get(f"{API}/auth/me/", token=bob).json()["username"] == "bob"  # others keep theirs
    # and the same from the shell (set_password + save, as `manage.py changepassword` does)
    srv.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                              "u = get_user_model().objects.get(username='bob'); "
                              "u.set_password('another long passphrase 7'); u.save()")
    assert_error(srv.get(f"{API}/auth/me/", token=bob), 401, "authentication_failed")
    assert "revokes the API tokens of this account" in page.text  # the form says so


# --------------------------------------------------------------------------
# finding 7: failures are logged and make the server not ready
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ops_server(tmp_path_factory):
    """A tiny untrained model that serves; uploads through the usual limits."""
    root = tmp_path_factory.mktemp("ops-server")
    models = tiny_export(root / "models")
    with LiveServer(root, {"ECGWEB_MODELS_DIR": str(models)}, require_model=True) as srv:
        srv.tokens = srv.create_users("olga")
        yield srv


def white_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buf, "PNG")
    return buf.getvalue()


def run_sql(srv: LiveServer, statements: list[str]) -> None:
    srv.manage("shell", "-c", "from django.db import connection\n"
                              f"for sql in {statements!r}: connection.cursor().execute(sql)")


#: the records' table out of the way (a database that cannot be queried), and back
HIDE_TABLE = ["ALTER TABLE classifier_classification RENAME TO classifier_hidden_by_test"]
UNHIDE_TABLE = ["ALTER TABLE classifier_hidden_by_test RENAME TO classifier_classification"]


def test_a_server_error_is_in_the_server_log(ops_server):
    srv = ops_server
    token = srv.tokens["olga"]
    run_sql(srv, HIDE_TABLE)
    try:
        assert_error(srv.get(f"{API}/classifications/", token=token), 500, "server_error")
    finally:
        run_sql(srv, UNHIDE_TABLE)
    log = srv.log_tail(10**6)
    assert re.search(rf"django\.request ERROR Internal Server Error: {API}/classifications/\n"
                     r"Traceback \(most recent call last\):", log), log[-3000:]
    assert "no such table: classifier_classification" in log
    assert srv.get(f"{API}/classifications/", token=token).status_code == 200


def test_readiness_fails_while_the_database_cannot_be_queried(ops_server):
    srv = ops_server
    assert srv.get(f"{API}/ready/").json() == {"status": "ready", "model_loaded": True}
    run_sql(srv, HIDE_TABLE)
    try:
        ready = assert_error(srv.get(f"{API}/ready/"), 503, "database_unavailable")
    finally:
        run_sql(srv, UNHIDE_TABLE)
    assert "migrate" in ready["detail"] and "classifier_" not in ready["detail"]
    assert "not ready: the database cannot be queried" in srv.log_tail(10**6)
    assert srv.get(f"{API}/ready/").status_code == 200


def test_readiness_fails_while_the_upload_folder_is_not_writable(ops_server):
    srv = ops_server
    assert srv.get(f"{API}/ready/").status_code == 200
    media, away = srv.media, srv.media.with_name("uploads-moved-by-test")
    media.mkdir(parents=True, exist_ok=True)
    media.rename(away)
    media.write_text("a file where the upload folder should be\n")
    try:
        body = assert_error(srv.get(f"{API}/ready/"), 503, "storage_unavailable")
    finally:
        media.unlink()
        away.rename(media)
    assert "ECGWEB_MEDIA_ROOT" in body["detail"] and str(srv.root) not in body["detail"]
    assert "not ready: the upload folder" in srv.log_tail(10**6)
    assert srv.get(f"{API}/ready/").status_code == 200


def test_a_model_with_the_wrong_output_rank_is_refused_at_load(tmp_path):
    models = tiny_export(tmp_path / "models", output="spatial")
    with LiveServer(tmp_path / "srv", {"ECGWEB_MODELS_DIR": str(models)}) as srv:
        token = srv.create_users("pia")["pia"]
        assert srv.get(f"{API}/health/").json() == {"status": "ok", "model_loaded": False}
        ready = assert_error(srv.get(f"{API}/ready/"), 503, "model_unavailable")
        assert "(None, 64, 64, 4)" in ready["detail"] and "(batch, 4)" in ready["detail"]
        assert str(tmp_path) not in ready["detail"]  # no server path
        # uploads get the same 503, not a 500 from the model's answer
        assert_error(srv.upload(white_png(), token), 503, "model_unavailable")
        assert "Traceback" not in srv.log_tail(10**6)
