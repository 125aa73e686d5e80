"""The web service (paper section 3.4) through real HTTP: gunicorn started by
``ecgpaper.serve.server.serve`` on a free loopback port (tests/support/server.py),
serving a tiny model trained here on the synthetic twin. Happy path with
Grad-CAM (section 5.2), auth, other users' records, throttling, every bad input,
odd valid images, no model, and persistence across a restart; then the
hardening of section 5.3: login throttles that rotating X-Forwarded-For does not
fool (API and admin), a model that cannot be loaded, deletion with the files, an
upload the database refuses (no file left behind), private file modes, metadata
stripped from stored copies, the auditor role, token expiry and revocation,
retention, CSP and no-store headers, the deployment checks.

The main server's tests run twice: on SQLite and on a throw-away PostgreSQL
(``support.devdb``: Debian's initdb/pg_ctl, loopback port, temporary folder),
the database webapp/README.md recommends; two instances on one PostgreSQL
database must lose no concurrent upload, share each user's throttle and see
each other's records.

The servers run in subprocesses with their own settings, so pytest-django stays
inactive (no DJANGO_SETTINGS_MODULE in this process).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from support.images import not_ecg_uploads
from support.model import tiny_export, train_and_export_smoke_model
from support.server import API, MANAGE, REPO, LiveServer, auth, running_instances, temp_postgres

from ecgpaper.config import CLASS_CODES, CLASS_NAMES

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------
# images: valid, odd and hostile
# --------------------------------------------------------------------------

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def ecg_page(seed: int = 0, size=(1106, 786)) -> Image.Image:
    from ecgpaper.data.twin_render import render_page

    return render_page(CLASS_CODES[seed % 4], np.random.default_rng(seed), size,
                       patient_id=f"T{seed:04d}", date="2024-01-01 10:00")


def noise(width=300, height=200, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims ``width`` x ``height`` RGB pixels (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def exif_rotated(img: Image.Image, fmt: str) -> bytes:
    """``img`` stored with EXIF orientation 6 (viewers rotate it 90 degrees clockwise)."""
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, fmt, exif=exif)


def animated_gif() -> bytes:
    frames = [noise(seed=1), noise(seed=2)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


@functools.cache
def odd_valid_images() -> dict[str, bytes]:
    page = ecg_page(7, (600, 426))
    sixteen = (np.asarray(page.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    palette = page.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "rgba.png": encode(page.convert("RGBA"), "PNG"),
        "grey16.png": encode(Image.fromarray(sixteen), "PNG"),
        "cmyk.jpg": encode(page.convert("CMYK"), "JPEG"),
        "exif-rotated.jpg": exif_rotated(page, "JPEG"),
        "grey.jpg": encode(page.convert("L"), "JPEG"),
        "page.webp": encode(page, "WEBP"),
        "page.tif": encode(page, "TIFF"),
        "page.bmp": encode(page, "BMP"),
        "still.gif": encode(page.convert("P"), "GIF"),
        "palette-transparent.png": encode(palette, "PNG"),
        "named-as-jpg-but-png.jpg": encode(page, "PNG"),
    }


def bad_images() -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, expected status, expected error code)"""
    jpeg = encode(ecg_page(3, (800, 568)), "JPEG")
    return {
        "empty.jpg": (b"", 400, "empty_file"),
        "notes.txt": (b"Patient notes, not an image.\n" * 20, 400, "invalid_image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], 400, "invalid_image"),
        "page.html": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
                      400, "invalid_image"),
        "ecg.svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                    b'height="10"><script>alert(document.cookie)</script></svg>', 400, "invalid_image"),
        "bomb.png": (png_claiming(50_000, 50_000), 400, "too_many_pixels"),
        "huge.png": (encode(Image.new("L", (9000, 5000), 255), "PNG"), 400, "too_many_pixels"),
        "animated.gif": (animated_gif(), 400, "animated_image"),
        "eps.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
                    400, "invalid_image"),
        "too-large.jpg": (b"\xff\xd8" + bytes(20 * 2**20 - 1), 413, "too_large"),
    }


# --------------------------------------------------------------------------
# a live server, and the model it serves
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> Path:
    """A smoke baseline (VGG16 and ResNet50, 64 px, synthetic twin), the best exported."""
    return train_and_export_smoke_model(tmp_path_factory.mktemp("trained")) / "models"


@pytest.fixture(scope="module")
def frontend_dist(tmp_path_factory) -> Path:
    """Stands for the Vite build (``base: "/static/"``)."""
    dist = tmp_path_factory.mktemp("dist")
    (dist / "assets").mkdir()
    (dist / "index.html").write_text('<!doctype html><title>ECG</title><div id="root"></div>'
                                     '<script type="module" src="/static/assets/index-AbCd1234.js">'
                                     '</script>\n')
    (dist / "assets" / "index-AbCd1234.js").write_text("console.log('ecg front end');\n")
    return dist


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server for this module (``LiveServer(postgres=...)`` makes
    one database per web server)."""
    from support.devdb import INSTALL_HINT, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_HINT}")
    with temp_postgres() as pg:
        yield pg


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, exported_model, frontend_dist, tmp_path_factory):
    env = {"ECGWEB_MODELS_DIR": str(exported_model), "ECGWEB_FRONTEND_DIST": str(frontend_dist),
           # these tests upload dozens of images a minute; guarded_server tests the limit
           "ECGWEB_THROTTLE_UPLOAD": "1000/min",
           # the opt-ins: file names kept (for display), the stored copy the whole page; the
           # privacy-first defaults are tested in test_webapp_security.py
           "ECGWEB_KEEP_FILENAMES": "1", "ECGWEB_HEADER_BAND": "keep"}
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    with LiveServer(tmp_path_factory.mktemp(f"main-server-{request.param}"), env, postgres=pg) as srv:
        yield srv


@pytest.fixture(scope="module")
def users(server) -> dict:
    """admin (staff, made the documented way), alice and bob, with API tokens."""
    server.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "a@example.org",
                  env={"DJANGO_SUPERUSER_PASSWORD": "admin-pw-9876"})
    out = server.manage("drf_create_token", "admin")
    admin_token = re.search(r"Generated token (\w+) for user admin", out).group(1)
    return {"admin": admin_token, **server.create_users("alice", "bob")}


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """No model, no front-end build, 3 requests a minute per user; two workers."""
    root = tmp_path_factory.mktemp("bare-server")
    with LiveServer(root, {"ECGWEB_MODELS_DIR": str(root / "no-models"),
                           "ECGWEB_FRONTEND_DIST": str(root / "no-dist"),
                           "ECGWEB_THROTTLE_USER": "3/min"}, workers=2) as srv:
        srv.tokens = list(srv.create_users("carol", "dave").values())
        yield srv


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert len(body["detail"]) > 20, body  # a sentence saying what to do
    return body


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_public_endpoints_schema_docs_and_front_end(server):
    health = server.get(f"{API}/health/")
    assert health.json() == {"status": "ok", "model_loaded": True}
    assert server.get(f"{API}/ready/").json() == {"status": "ready", "model_loaded": True}
    csrf = requests.get(server.url + f"{API}/auth/csrf/", timeout=10)
    assert csrf.status_code == 200 and csrf.json()["csrfToken"] and "csrftoken" in csrf.cookies

    schema = server.get(f"{API}/schema/", params={"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for p in ("health/", "auth/login/", "model/", "classifications/", "classifications/{id}/",
              "classifications/{id}/image/", "classifications/{id}/heatmap/"):
        assert f"{API}/{p}" in paths, p
    upload = paths[f"{API}/classifications/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"201", "400", "413", "503"} <= set(upload["responses"])
    docs = server.get(f"{API}/docs/")
    assert docs.status_code == 200 and "text/html" in docs.headers["Content-Type"]
    # Swagger UI from this server (drf-spectacular-sidecar), its start-up script a file of its own
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', docs.text)
    assert scripts and all(src.startswith("/") and not src.startswith("//") for src in scripts), scripts
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", docs.text)  # no inline script
    assert "cdn" not in docs.text.lower()
    for src in scripts:
        assert server.get(src).status_code == 200, src
    csp = docs.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    server.manage("spectacular", "--fail-on-warn", "--validate", "--file", str(server.root / "schema.yml"))

    index = server.get("/")
    assert index.status_code == 200 and 'id="root"' in index.text
    assert index.headers["Content-Security-Policy"] == docs.headers["Content-Security-Policy"]
    assert server.get("/history/42").text == index.text  # client-side routes get the page too
    asset = server.get("/static/assets/index-AbCd1234.js")
    assert asset.status_code == 200 and "ecg front end" in asset.text
    assert "immutable" in asset.headers["Cache-Control"]
    assert server.get("/static/admin/css/base.css").status_code == 200
    assert_error(server.get(f"{API}/nothing-here/"), 404, "not_found")


def test_authentication_is_required(server, users):
    assert_error(server.get(f"{API}/classifications/"), 401, "not_authenticated")
    assert_error(server.get(f"{API}/model/"), 401, "not_authenticated")
    assert_error(server.get(f"{API}/classifications/1/image/"), 401, "not_authenticated")
    assert_error(server.upload(encode(noise(), "PNG"), None), 401, "not_authenticated")
    assert_error(server.get(f"{API}/classifications/", token="0" * 40), 401, "authentication_failed")
    assert_error(server.get(f"{API}/auth/me/"), 403, "not_authenticated")
    me = server.get(f"{API}/auth/me/", token=users["admin"])
    assert me.json() == {"username": "admin", "is_staff": True}


def test_session_login_with_csrf(server, users):
    s = requests.Session()
    login = f"{server.url}{API}/auth/login/"
    assert_error(s.post(login, json={"username": "alice", "password": "alice-pw-1234"}, timeout=10),
                 403, "csrf_failed")
    token = s.get(f"{server.url}{API}/auth/csrf/", timeout=10).json()["csrfToken"]
    headers = {"X-CSRFToken": token, "Referer": server.url + "/"}
    assert_error(s.post(login, json={"username": "alice", "password": "wrong"}, headers=headers, timeout=10),
                 400, "invalid_credentials")
    r = s.post(login, json={"username": "alice", "password": "alice-pw-1234"}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json() == {"username": "alice", "is_staff": False}
    assert s.get(f"{server.url}{API}/auth/me/", timeout=10).json()["username"] == "alice"
    # login rotates the CSRF token: unsafe requests need the new one
    page = encode(ecg_page(1), "JPEG")
    url = f"{server.url}{API}/classifications/"
    assert_error(s.post(url, files={"image": ("p.jpg", page)}, timeout=60), 403, "csrf_failed")
    headers["X-CSRFToken"] = s.cookies["csrftoken"]
    r = s.post(url, files={"image": ("p.jpg", page)}, headers=headers, timeout=60)
    assert r.status_code == 201, r.text[:500]
    assert s.get(f"{server.url}{r.json()['image_url']}", timeout=10).headers["Content-Type"] == "image/jpeg"
    assert s.post(f"{server.url}{API}/auth/logout/", headers=headers, timeout=10).status_code == 204
    assert_error(s.get(f"{server.url}{API}/auth/me/", timeout=10), 403, "not_authenticated")


def test_model_card(server, users, exported_model):
    meta = json.loads((exported_model / "ecg_classifier.json").read_text())
    card = server.get(f"{API}/model/", token=users["alice"]).json()
    assert card["loaded"] is True
    assert card["model"] == meta["model"] and card["model"] in ("VGG16", "ResNet50")
    assert card["run_id"] == meta["run_id"] and card["version"] == meta["ecgpaper_version"]
    assert card["synthetic"] is True and card["dataset"] == "synthetic-smoke"
    assert card["profile"] == "smoke" and card["input_size"] == 64
    assert card["class_codes"] == list(CLASS_CODES)
    assert card["class_names"] == [CLASS_NAMES[c] for c in CLASS_CODES]
    assert card["metrics"] == meta["metrics"] and card["preprocessing"] == meta["preprocessing"]
    gate = card["page_gate"]  # what the gate before classification turns away, and its calibration
    assert "blank" in gate["rejects"] and "photos" in gate["rejects"] and gate["threshold"] == meta["page_gate"]["threshold"]
    assert f"synthetic-smoke, {meta['protocol']} split seed 0" in gate["source"] and gate["n_val"] > 0
    assert "precision" not in gate  # the card is for people: no covariance matrix
    # the probabilities are those the service computes: the run's temperature scaling, fitted on
    # its validation pages (serve.inference divides every answer by it)
    fitted, calibration = meta["metrics"]["calibration"], card["calibration"]
    assert calibration["calibrated"] is True and calibration["method"] == "temperature scaling"
    assert calibration["temperature"] == meta["temperature"] == fitted["temperature"]
    assert calibration["fitted_on"] == "validation" and calibration["n_val"] == fitted["n_val"] > 0
    assert calibration["test_ece_after"] == fitted["test_ece_after"]
    assert calibration["statement"].startswith(
        f"The probabilities are calibrated: temperature scaling (T = {meta['temperature']:.2f}) fitted on "
        f"the run's {fitted['n_val']} validation pages; expected calibration error on the test pages ")


def test_the_model_card_says_when_the_probabilities_are_not_calibrated(tmp_path):
    """An export of a run without temperature scaling (an older version's run, reused: ``tiny_export``
    stands for it, with no metrics) serves its probabilities as they are, and the card says so."""
    models = tiny_export(tmp_path / "models")
    with LiveServer(tmp_path / "srv", {"ECGWEB_MODELS_DIR": str(models)}, require_model=True) as srv:
        card = srv.get(f"{API}/model/", token=srv.create_users("uma")["uma"]).json()
    assert card["calibration"]["calibrated"] is False and card["calibration"]["temperature"] == 1.0
    assert card["calibration"]["statement"].startswith("The probabilities are not calibrated")


def test_happy_path_classification_with_heat_map(server, users, exported_model):
    page = encode(ecg_page(0), "JPEG", quality=90)
    r = server.upload(page, users["alice"], name="../../etc/MI(1).jpg")
    assert r.status_code == 201, r.text[:1000]
    body = r.json()
    assert set(body) == {"id", "created", "filename", "sha256", "class_code", "class_name",
                         "probabilities", "model", "inference_ms", "total_ms", "image_url",
                         "heatmap_url", "heatmap_png"}
    assert body["filename"] == "MI(1).jpg"  # display only: the directory part is dropped
    assert body["sha256"] == hashlib.sha256(page).hexdigest()
    probs = body["probabilities"]
    assert [p["code"] for p in probs] == list(CLASS_CODES)
    assert [p["name"] for p in probs] == [CLASS_NAMES[c] for c in CLASS_CODES]
    assert sum(p["probability"] for p in probs) == pytest.approx(1.0, abs=1e-5)
    best = max(probs, key=lambda p: p["probability"])
    assert body["class_code"] == best["code"] and body["class_name"] == best["name"]
    meta = json.loads((exported_model / "ecg_classifier.json").read_text())
    assert body["model"] == {"name": meta["model"], "run_id": meta["run_id"], "version": "0.1.0",
                             "dataset": "synthetic-smoke", "synthetic": True}
    assert 0 < body["inference_ms"] <= body["total_ms"] < 30_000
    assert body["image_url"] == f"{API}/classifications/{body['id']}/image/"
    assert body["heatmap_url"] == f"{API}/classifications/{body['id']}/heatmap/"
    assert body["heatmap_png"].startswith("data:image/png;base64,")
    inline = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"].split(",", 1)[1])))
    assert inline.format == "PNG" and inline.size == (64, 64)  # over the 64 px model input

    # the same answer as the Classifier in this process (serving = training preprocessing)
    from ecgpaper.serve.inference import Classifier

    local = Classifier(exported_model).classify(page)
    assert local["class_code"] == body["class_code"]
    for p in probs:
        assert p["probability"] == pytest.approx(local["probabilities"][p["code"]], abs=1e-5)

    token = users["alice"]
    stored = server.get(body["image_url"], token=token)
    assert stored.headers["Content-Type"] == "image/jpeg"
    assert stored.headers["Cache-Control"] == "no-store"  # not kept in the browser after sign-out
    assert "Content-Security-Policy" in stored.headers
    kept, sent = Image.open(io.BytesIO(stored.content)), Image.open(io.BytesIO(page))
    assert kept.size == sent.size  # the stored copy is the picture, re-encoded (see metadata test)
    assert np.abs(np.asarray(kept, float) - np.asarray(sent, float)).mean() < 3
    heat = server.get(body["heatmap_url"], token=token)
    assert heat.headers["Content-Type"] == "image/png" and heat.headers["Cache-Control"] == "no-store"
    assert base64.b64decode(body["heatmap_png"].split(",", 1)[1]) == heat.content
    detail = server.get(f"{API}/classifications/{body['id']}/", token=token).json()
    assert detail == {k: v for k, v in body.items() if k != "heatmap_png"}

    quick = server.upload(encode(ecg_page(2), "PNG"), token, name="fast.png", query="?explain=0")
    assert quick.status_code == 201 and quick.json()["heatmap_png"] is None
    assert quick.json()["heatmap_url"] is None
    assert_error(server.get(f"{API}/classifications/{quick.json()['id']}/heatmap/", token=token),
                 404, "not_found")
    assert_error(server.upload(page, token, query="?explain=maybe"), 400, "invalid_parameter")

    listing = server.get(f"{API}/classifications/", token=token).json()
    assert set(listing) == {"count", "next", "previous", "results"}
    ids = [rec["id"] for rec in listing["results"]]
    assert ids[:2] == [quick.json()["id"], body["id"]] and ids == sorted(ids, reverse=True)
    assert "heatmap_png" not in listing["results"][0]

    # stored under generated names inside MEDIA_ROOT only; the audit log has the upload's sha256
    media = server.state / "uploads"
    files = [p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file()]
    assert files and all(re.fullmatch(r"(images|heatmaps)/\d{4}/\d{2}/[0-9a-f]{32}\.\w+", f) for f in files)
    audit = (server.state / "audit.log").read_text()
    assert re.search(rf'user="alice" ip=127.0.0.1 method=POST path="{API}/classifications/" '
                     rf'status=201 ms=[\d.]+ sha256={body["sha256"]} record={body["id"]} '
                     rf'owner="alice"$', audit, re.M)
    assert not (server.root / "results" / "webapp").exists()  # nothing beside the shareable results


def test_users_see_only_their_own_records_unless_staff(server, users):
    mine = server.upload(encode(ecg_page(5), "JPEG"), users["bob"], name="bob.jpg").json()
    alices = server.get(f"{API}/classifications/", token=users["alice"]).json()["results"]
    assert alices and mine["id"] not in [r["id"] for r in alices]
    bobs = server.get(f"{API}/classifications/", token=users["bob"]).json()
    assert [r["id"] for r in bobs["results"]] == [mine["id"]] and bobs["count"] == 1
    other = alices[0]["id"]
    for suffix in ("", "image/", "heatmap/"):
        assert_error(server.get(f"{API}/classifications/{other}/{suffix}", token=users["bob"]),
                     404, "not_found")
    everyone = server.get(f"{API}/classifications/", token=users["admin"]).json()
    assert {mine["id"], other} <= {r["id"] for r in everyone["results"]}
    assert server.get(f"{API}/classifications/{other}/image/", token=users["admin"]).status_code == 200


def test_bad_inputs_get_clear_4xx_and_the_server_keeps_answering(server, users):
    token = users["bob"]
    before = server.get(f"{API}/classifications/", token=token).json()["count"]
    for name, (data, status, code) in bad_images().items():
        body = assert_error(server.upload(data, token, name=name), status, code)
        if name.endswith((".svg", ".html")):
            assert "SVG or HTML" in body["detail"]
    url = f"{server.url}{API}/classifications/"
    assert_error(requests.post(url, headers=auth(token), files={"other": ("x.jpg", b"123")}, timeout=10),
                 400, "missing_file")
    assert_error(requests.post(url, headers=auth(token), json={"image": "x"}, timeout=10),
                 415, "unsupported_media_type")
    two = [("image", ("a.png", encode(noise(), "PNG"))), ("image", ("b.png", encode(noise(), "PNG")))]
    assert_error(requests.post(url, headers=auth(token), files=two, timeout=10), 400, "bad_request")
    # a body announced as 200 MB is refused before it is read
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {API}/classifications/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token "
                     f"{token}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     f"Content-Length: {200 * 2**20}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413") and '{"error": "too_large"' in body
    audit = (server.state / "audit.log").read_text()
    assert re.search(rf'user="bob" ip=127.0.0.1 method=POST path="{API}/classifications/" status=413 ',
                     audit)  # the refusal names who sent it

    assert server.get(f"{API}/health/").json()["status"] == "ok"
    ok = server.upload(encode(ecg_page(4), "JPEG"), token)
    assert ok.status_code == 201
    assert server.get(f"{API}/classifications/", token=token).json()["count"] == before + 1
    assert "Traceback" not in server.log_tail(200_000)


def test_an_upload_that_is_not_an_ecg_page_gets_422_and_no_class(server, users):
    """Issue 22, item 9: a blank page, noise, a photo or a letter is not classified,
    and nothing is stored for it; an ECG page still is."""
    token = users["bob"]
    before, files = server.get(f"{API}/classifications/", token=token).json()["count"], stored_files(server)
    for name, data in not_ecg_uploads().items():
        body = assert_error(server.upload(data, token, name=name), 422, "not_an_ecg")
        assert "12-lead ECG report page" in body["detail"] and set(body) == {"error", "detail"}, name
    assert server.get(f"{API}/classifications/", token=token).json()["count"] == before
    assert stored_files(server) == files
    assert server.upload(encode(ecg_page(6), "JPEG"), token).status_code == 201


@pytest.mark.parametrize("name", list(odd_valid_images()))
def test_odd_but_valid_images_are_classified(server, users, name):
    r = server.upload(odd_valid_images()[name], users["alice"], name=name)
    assert r.status_code == 201, r.text[:500]
    assert r.json()["class_code"] in CLASS_CODES


def test_exif_orientation_is_applied_before_classifying(server, users):
    # 768 x 512 and the 64 px model: both sides are multiples of the decoder's reduction
    # factor (4), so reducing before rotating gives exactly the pixels of the upright page
    page = ecg_page(6, (768, 512))
    tagged = server.upload(exif_rotated(page, "PNG"), users["alice"], name="tagged.png").json()
    upright = page.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows for orientation 6
    plain = server.upload(encode(upright, "PNG"), users["alice"], name="upright.png").json()
    assert [p["probability"] for p in tagged["probabilities"]] == \
        pytest.approx([p["probability"] for p in plain["probabilities"]], abs=1e-6)


def test_without_a_model_the_api_says_what_to_run(bare_server):
    health = bare_server.get(f"{API}/health/").json()
    assert health == {"status": "ok", "model_loaded": False}
    token = bare_server.tokens[0]
    body = assert_error(bare_server.get(f"{API}/model/", token=token), 503, "model_unavailable")
    assert "python -m ecgpaper export" in body["detail"] and "./run_all.sh" in body["detail"]
    assert_error(bare_server.upload(encode(noise(), "PNG"), token), 503, "model_unavailable")
    page = bare_server.get("/")
    assert page.status_code == 200 and "npm ci &amp;&amp; npm run build" in page.text


def test_throttling_per_user(bare_server):
    token = bare_server.tokens[1]  # a user with no requests yet: 3 a minute, over 2 workers
    for _ in range(3):
        assert bare_server.get(f"{API}/classifications/", token=token).status_code == 200
    r = bare_server.get(f"{API}/classifications/", token=token)
    body = assert_error(r, 429, "throttled")
    assert "3/min" in body["detail"] and int(r.headers["Retry-After"]) > 0
    assert bare_server.get(f"{API}/health/").status_code == 200  # health is never throttled
    # carol's budget is her own (at most 2 requests spent by the test before)
    assert bare_server.get(f"{API}/classifications/", token=bare_server.tokens[0]).status_code == 200


def test_records_survive_a_restart(server, users):
    token = users["alice"]
    before = server.get(f"{API}/classifications/", token=token).json()
    s = requests.Session()
    csrf = s.get(f"{server.url}{API}/auth/csrf/", timeout=10).json()["csrfToken"]
    s.post(f"{server.url}{API}/auth/login/", json={"username": "bob", "password": "bob-pw-1234"},
           headers={"X-CSRFToken": csrf, "Referer": server.url + "/"}, timeout=10).raise_for_status()
    key_file = server.state / "secret_key"
    key = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    server.stop()
    server.start()

    after = server.get(f"{API}/classifications/", token=token).json()
    assert after["count"] == before["count"] > 0
    assert [r["id"] for r in after["results"]] == [r["id"] for r in before["results"]]
    first = after["results"][0]
    assert server.get(first["image_url"], token=token).status_code == 200
    assert key_file.read_text() == key
    me = s.get(f"{server.url}{API}/auth/me/", timeout=10)  # cookies ignore the (new) port
    assert me.json()["username"] == "bob"  # the session outlives the restart (same key, DB sessions)


def test_serve_subcommand_arguments():
    import argparse

    from ecgpaper.serve.server import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "3"])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 3) and callable(args.func)
    defaults = parser.parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.workers) == ("127.0.0.1", 8000, 2)


def test_classifier_refuses_missing_or_altered_models(exported_model, tmp_path):
    from ecgpaper.serve.inference import Classifier, ModelUnavailable

    with pytest.raises(ModelUnavailable) as err:
        Classifier(tmp_path)
    assert str(err.value) == ("No model has been exported yet: run `python -m ecgpaper export` "
                              "(after `python -m ecgpaper run baseline`) or `./run_all.sh`.")
    altered = tmp_path / "altered"
    altered.mkdir()
    for f in exported_model.iterdir():
        (altered / f.name).write_bytes(f.read_bytes())
    with open(altered / "ecg_classifier.keras", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelUnavailable, match="does not match the sha256"):
        Classifier(altered)



# --------------------------------------------------------------------------
# hardening (paper section 5.3): throttles, model failures, patient data, roles
# --------------------------------------------------------------------------

def broken_model_dir(exported_model: Path, folder: Path) -> Path:
    """An export whose model file passes the sha256 check but is no Keras archive."""
    folder.mkdir(parents=True)
    meta = json.loads((exported_model / "ecg_classifier.json").read_text())
    junk = b"PK\x03\x04 not a Keras archive, but its sha256 is in the metadata\n" * 64
    (folder / Path(meta["model_file"]).name).write_bytes(junk)
    meta["model_sha256"] = hashlib.sha256(junk).hexdigest()
    (folder / "ecg_classifier.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def guarded_server(exported_model, tmp_path_factory):
    """A model that cannot be loaded; 3 login attempts and 2 uploads a minute; tokens
    that last an hour; two workers (the limits must hold across them)."""
    root = tmp_path_factory.mktemp("guarded-server")
    models = broken_model_dir(exported_model, root / "broken-models")
    with LiveServer(root, {"ECGWEB_MODELS_DIR": str(models), "ECGWEB_THROTTLE_LOGIN": "3/min",
                           "ECGWEB_THROTTLE_UPLOAD": "2/min", "ECGWEB_TOKEN_TTL_HOURS": "1",
                           "ECGWEB_PROXY": "direct"},  # clients reach it directly: X-F-F ignored
                    workers=2) as srv:
        srv.tokens = srv.create_users("erin", "frank", "gina")
        srv.models = models
        yield srv


def csrf_session(srv: LiveServer) -> tuple[requests.Session, dict]:
    s = requests.Session()
    token = s.get(f"{srv.url}{API}/auth/csrf/", timeout=10).json()["csrfToken"]
    return s, {"X-CSRFToken": token, "Referer": srv.url + "/"}


def test_login_throttle_holds_when_x_forwarded_for_rotates(guarded_server):
    srv = guarded_server
    s, headers = csrf_session(srv)
    login = f"{srv.url}{API}/auth/login/"
    for i in range(3):
        r = s.post(login, json={"username": "frank", "password": f"guess-{i}"},
                   headers={**headers, "X-Forwarded-For": f"203.0.113.{i}"}, timeout=10)
        assert_error(r, 400, "invalid_credentials")
    for i in range(3, 6):  # a new "client address" per guess changes nothing: the socket's counts
        r = s.post(login, json={"username": "frank", "password": "frank-pw-1234"},
                   headers={**headers, "X-Forwarded-For": f"198.51.100.{i}, 203.0.113.{i}"}, timeout=10)
        body = assert_error(r, 429, "throttled")
        assert "3/min login attempts per user name and address" in body["detail"]
        assert int(r.headers["Retry-After"]) > 0
    # the limit is per user name: another account from the same address may still log in
    r = s.post(login, json={"username": "gina", "password": "gina-pw-1234"}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["username"] == "gina"
    audit = (srv.state / "audit.log").read_text()
    assert re.search(rf'user="-" ip=127.0.0.1 method=POST path="{API}/auth/login/" status=400 .* '
                     r'attempted="frank"$', audit, re.M)  # failed logins name the account tried
    assert "203.0.113" not in audit  # the address logged is the socket's, not the header's


def form_csrf(html: str) -> str:
    """The CSRF token of a Django form (the admin's)."""
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def test_admin_login_is_throttled(guarded_server):
    srv = guarded_server
    s = requests.Session()
    url = f"{srv.url}/admin/login/"
    form = s.get(url, timeout=10)
    assert form.status_code == 200
    csrf = form_csrf(form.text)
    answers = []
    for i in range(5):
        r = s.post(url, data={"csrfmiddlewaretoken": csrf, "username": "erin", "password": f"guess-{i}",
                              "next": "/admin/"},
                   headers={"Referer": url, "X-Forwarded-For": f"192.0.2.{i}"}, timeout=10)
        answers.append(r.status_code)
    assert answers == [200, 200, 200, 429, 429]  # 200: the form again, with its error
    assert "Too many login attempts" in r.text and int(r.headers["Retry-After"]) > 0


def test_a_model_that_cannot_be_loaded_leaves_the_service_up(guarded_server):
    srv = guarded_server
    assert srv.proc.poll() is None  # both workers booted (gunicorn would stop otherwise)
    assert srv.get(f"{API}/health/").json() == {"status": "ok", "model_loaded": False}
    ready = assert_error(srv.get(f"{API}/ready/"), 503, "model_unavailable")
    token = srv.tokens["erin"]
    for _ in range(2):  # the failure is remembered: both answers are 503 with the same sentence
        upload = assert_error(srv.upload(encode(noise(), "PNG"), token), 503, "model_unavailable")
        assert upload["detail"] == ready["detail"]
    assert "could not be loaded" in ready["detail"] and "python -m ecgpaper export" in ready["detail"]
    assert str(srv.models) not in ready["detail"] and str(srv.root) not in ready["detail"]
    assert_error(srv.get(f"{API}/model/", token=token), 503, "model_unavailable")
    assert "Worker failed to boot" not in srv.log_tail(200_000)


def test_a_failed_lazy_load_is_remembered_too(exported_model, tmp_path):
    """ECGWEB_PRELOAD_MODEL=0: the first upload tries to load the model; later ones
    get the same 503 without loading it again."""
    models = broken_model_dir(exported_model, tmp_path / "broken-models")
    with LiveServer(tmp_path / "lazy", {"ECGWEB_MODELS_DIR": str(models), "ECGWEB_PRELOAD_MODEL": "0"}) as srv:
        token = srv.create_users("lazy")["lazy"]
        answers = [assert_error(srv.upload(encode(noise(), "PNG"), token), 503, "model_unavailable")
                   for _ in range(3)]
        assert answers[0] == answers[1] == answers[2]
        assert srv.get(f"{API}/health/").status_code == 200
        assert srv.log_tail(200_000).count("the exported model could not be loaded") == 1


def test_uploads_have_their_own_lower_limit(guarded_server):
    srv = guarded_server
    token = srv.tokens["gina"]
    answers = [srv.upload(encode(noise(), "PNG"), token).status_code for _ in range(3)]
    assert answers == [503, 503, 429]  # counted before the model is needed
    body = assert_error(srv.upload(encode(noise(), "PNG"), token), 429, "throttled")
    assert "2/min uploads per user" in body["detail"]
    assert srv.get(f"{API}/classifications/", token=token).status_code == 200  # reading goes on


def test_tokens_expire_and_logout_revokes_them(guarded_server):
    srv = guarded_server
    script = ("import datetime as dt; from django.contrib.auth import get_user_model; "
              "from django.utils import timezone; from rest_framework.authtoken.models import Token; "
              "u = get_user_model().objects.create_user('hal', password='hal-pw-1234'); "
              "t = Token.objects.create(user=u); "
              "Token.objects.filter(pk=t.pk).update(created=timezone.now() - dt.timedelta(hours=2)); "
              "print(t.key)")
    old = srv.manage("shell", "-c", script).strip().splitlines()[-1]
    body = assert_error(srv.get(f"{API}/classifications/", token=old), 401, "authentication_failed")
    assert "expired" in body["detail"] and "drf_create_token -r" in body["detail"]

    token = srv.tokens["erin"]
    assert srv.get(f"{API}/auth/me/", token=token).json()["username"] == "erin"
    r = requests.post(f"{srv.url}{API}/auth/logout/", headers=auth(token), timeout=10)
    assert r.status_code == 204
    assert_error(srv.get(f"{API}/auth/me/", token=token), 401, "authentication_failed")
    assert_error(srv.get(f"{API}/classifications/", token=token), 401, "authentication_failed")


def stored_files(srv: LiveServer) -> set[Path]:
    return {p for p in srv.media.rglob("*") if p.is_file()}


def test_delete_removes_the_record_and_both_files(server, users):
    before = stored_files(server)
    made = server.upload(encode(ecg_page(8), "JPEG"), users["alice"], name="to-delete.jpg").json()
    new = stored_files(server) - before
    assert sorted(p.parts[-4] for p in new) == ["heatmaps", "images"]
    url = f"{API}/classifications/{made['id']}/"
    assert_error(requests.delete(server.url + url, headers=auth(users["bob"]), timeout=10),
                 404, "not_found")  # not bob's
    assert all(p.exists() for p in new)
    r = requests.delete(server.url + url, headers=auth(users["alice"]), timeout=10)
    assert r.status_code == 204
    assert not any(p.exists() for p in new)
    for suffix in ("", "image/", "heatmap/"):
        assert_error(server.get(url + suffix, token=users["alice"]), 404, "not_found")
    assert made["id"] not in [rec["id"] for rec in
                              server.get(f"{API}/classifications/", token=users["admin"]).json()["results"]]
    audit = (server.state / "audit.log").read_text()
    assert re.search(rf'user="alice" .*method=DELETE path="{url}" status=204 .*record={made["id"]} '
                     r'owner="alice"$', audit, re.M)


#: statements that make the database refuse new records (as a full disk would), and undo it
REFUSE_RECORDS = {
    "sqlite": (["CREATE TRIGGER refuse_records BEFORE INSERT ON classifier_classification "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
               ["DROP TRIGGER refuse_records"]),
    "postgres": (["CREATE FUNCTION refuse_records() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
                  "CREATE TRIGGER refuse_records BEFORE INSERT ON classifier_classification "
                  "FOR EACH ROW EXECUTE FUNCTION refuse_records()"],
                 ["DROP TRIGGER refuse_records ON classifier_classification",
                  "DROP FUNCTION refuse_records()"]),
}


def run_sql(srv: LiveServer, statements: list[str]) -> None:
    srv.manage("shell", "-c", "from django.db import connection\n"
                              f"for sql in {statements!r}: connection.cursor().execute(sql)")


def test_an_upload_the_database_refuses_leaves_no_file_behind(server, users):
    """The upload's rollback (services.classify_upload): the record cannot be saved
    after its image and heat map were written; the answer is a 500 in the API's
    shape, both files are deleted, nothing is listed, and the next upload works."""
    token = users["bob"]
    count = server.get(f"{API}/classifications/", token=token).json()["count"]
    before = stored_files(server)
    page = encode(ecg_page(17), "JPEG")
    refuse, allow = REFUSE_RECORDS[server.database]
    run_sql(server, refuse)
    try:
        assert_error(server.upload(page, token, name="refused.jpg"), 500, "server_error")
    finally:
        run_sql(server, allow)
    assert stored_files(server) == before
    assert server.get(f"{API}/classifications/", token=token).json()["count"] == count
    audit = (server.state / "audit.log").read_text()
    assert re.search(rf'user="bob" .*method=POST path="{API}/classifications/" status=500 .*'
                     rf'sha256={hashlib.sha256(page).hexdigest()}$', audit, re.M)

    again = server.upload(page, token, name="accepted.jpg")
    assert again.status_code == 201, again.text[:500]
    assert len(stored_files(server) - before) == 2
    assert server.get(f"{API}/classifications/", token=token).json()["count"] == count + 1


def test_stored_files_are_private(server, users):
    server.upload(encode(ecg_page(9), "PNG"), users["bob"], name="private.png")
    state = server.state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.rglob("*") if p.is_file() and p.parent.name != "static"
             and "static" not in p.relative_to(state).parts]
    sqlite = {"db.sqlite3", "throttle.sqlite3"} if server.database == "sqlite" else set()
    assert {p.name for p in files} >= {"audit.log", "secret_key"} | sqlite
    assert len(stored_files(server)) >= 2
    modes = {}
    for p in files:
        try:
            modes[p.relative_to(state).as_posix()] = oct(stat.S_IMODE(p.stat().st_mode))
        except FileNotFoundError:  # SQLite's -wal/-shm files come and go
            pass
    assert {"audit.log", "secret_key"} | sqlite <= set(modes)
    assert set(modes.values()) == {"0o600"}, modes
    folders = [p for p in (state / "uploads").rglob("*") if p.is_dir()]
    assert folders and {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o700"}


def test_stored_copies_carry_no_metadata(server, users):
    page = ecg_page(10, (800, 568))
    exif = page.getexif()
    exif[0x010E] = "Patient: John Doe, born 1950-02-03"  # ImageDescription
    exif[0x013B] = "Dr. Jane Roe"  # Artist
    jpeg = encode(page, "JPEG", exif=exif, comment=b"MRN 123456 John Doe")
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Patient", "John Doe MRN 123456")
    png = encode(page, "PNG", pnginfo=text)
    for name, data, kind in (("exif.jpg", jpeg, "image/jpeg"), ("text.png", png, "image/png")):
        assert b"John Doe" in data
        made = server.upload(data, users["alice"], name=name).json()
        stored = server.get(made["image_url"], token=users["alice"])
        assert stored.headers["Content-Type"] == kind
        assert b"John Doe" not in stored.content and b"123456" not in stored.content
        kept = Image.open(io.BytesIO(stored.content))
        assert not kept.getexif() and "comment" not in kept.info and "Patient" not in kept.info
        assert kept.size == page.size


def test_auditor_group_reads_every_record_staff_alone_does_not(server, users):
    script = ("import json; from django.contrib.auth import get_user_model; "
              "from django.contrib.auth.models import Group; "
              "from rest_framework.authtoken.models import Token; User = get_user_model(); "
              "a = User.objects.create_user('audrey', password='audrey-pw-1234'); "
              "a.groups.add(Group.objects.get(name='auditor')); "
              "s = User.objects.create_user('sam', password='sam-pw-1234', is_staff=True); "
              "print(json.dumps({u.username: Token.objects.create(user=u).key for u in (a, s)}))")
    tokens = json.loads(server.manage("shell", "-c", script).strip().splitlines()[-1])
    alices = server.get(f"{API}/classifications/", token=users["alice"]).json()["results"]
    assert alices
    seen = server.get(f"{API}/classifications/?page=1", token=tokens["audrey"]).json()
    assert seen["count"] == server.get(f"{API}/classifications/", token=users["admin"]).json()["count"]
    record = alices[0]
    assert server.get(f"{API}/classifications/{record['id']}/image/", token=tokens["audrey"]).status_code == 200
    # reading is not deleting
    assert_error(requests.delete(f"{server.url}{API}/classifications/{record['id']}/",
                                 headers=auth(tokens["audrey"]), timeout=10), 403, "permission_denied")
    # admin access (is_staff) alone does not show other users' records
    assert server.get(f"{API}/classifications/", token=tokens["sam"]).json()["count"] == 0
    assert_error(server.get(f"{API}/classifications/{record['id']}/", token=tokens["sam"]), 404, "not_found")
    audit = (server.state / "audit.log").read_text()
    assert re.search(rf'user="audrey" .*path="{API}/classifications/{record["id"]}/image/" status=200 '
                     r'.*owner="alice" other_user=1$', audit, re.M)


def admin_session(srv: LiveServer) -> requests.Session:
    s = requests.Session()
    url = f"{srv.url}/admin/login/"
    csrf = form_csrf(s.get(url, timeout=10).text)
    r = s.post(url, data={"csrfmiddlewaretoken": csrf, "username": "admin", "password": "admin-pw-9876",
                          "next": "/admin/"}, headers={"Referer": url}, timeout=10)
    assert r.status_code == 200 and "Log out" in r.text, r.text[:500]
    return s


def test_admin_change_page_and_deletions_remove_files(server, users):
    s = admin_session(server)
    made = server.upload(encode(ecg_page(11), "JPEG"), users["bob"], name="admin-view.jpg").json()
    page = s.get(f"{server.url}/admin/classifier/classification/{made['id']}/change/", timeout=10)
    assert page.status_code == 200
    assert f'href="{made["image_url"]}"' in page.text and f'href="{made["heatmap_url"]}"' in page.text
    assert "admin-view.jpg" in page.text
    assert page.headers["Content-Security-Policy"]

    # deleting in the admin removes the files
    before = stored_files(server)
    url = f"{server.url}/admin/classifier/classification/{made['id']}/delete/"
    csrf = form_csrf(s.get(url, timeout=10).text)
    r = s.post(url, data={"csrfmiddlewaretoken": csrf, "post": "yes"}, headers={"Referer": url}, timeout=10)
    assert r.status_code == 200 and "was deleted successfully" in r.text
    assert len(before - stored_files(server)) == 2

    # and deleting a user removes all their records' files
    ivy = server.create_users("ivy")["ivy"]
    before = stored_files(server)
    for seed in (12, 13):
        assert server.upload(encode(ecg_page(seed), "JPEG"), ivy).status_code == 201
    ivys = stored_files(server) - before
    assert len(ivys) == 4
    server.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                                 "get_user_model().objects.get(username='ivy').delete()")
    assert not any(p.exists() for p in ivys)


def test_retention_command_purges_old_records(server, users):
    old = server.upload(encode(ecg_page(14), "JPEG"), users["bob"], name="old.jpg").json()
    recent = server.upload(encode(ecg_page(15), "JPEG"), users["bob"], name="recent.jpg").json()
    server.manage("shell", "-c", "import datetime as dt; from django.utils import timezone; "
                                 "from classifier.models import Classification; "
                                 f"Classification.objects.filter(pk={old['id']}).update("
                                 "created=timezone.now() - dt.timedelta(days=100))")
    before = stored_files(server)
    dry = server.manage("purge_classifications", "--days", "90", "--dry-run")
    assert dry.startswith("would delete 1 classification(s)") and stored_files(server) == before
    out = server.manage("purge_classifications", env={"ECGWEB_RETENTION_DAYS": "90"})
    assert out.startswith("deleted 1 classification(s)")
    assert len(before - stored_files(server)) == 2
    assert_error(server.get(f"{API}/classifications/{old['id']}/", token=users["bob"]), 404, "not_found")
    assert server.get(f"{API}/classifications/{recent['id']}/", token=users["bob"]).status_code == 200
    res = subprocess.run([sys.executable, str(MANAGE), "purge_classifications"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=server.env)
    assert res.returncode != 0 and "set ECGWEB_RETENTION_DAYS" in res.stderr


@pytest.mark.parametrize("host, checked", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_prints_the_deployment_checks_beyond_loopback(tmp_path, host, checked):
    # serve() up to the point where it would exec gunicorn: nothing is bound
    code = ("import os, sys; os.execve = lambda *a: print('would exec gunicorn', file=sys.stderr); "
            f"from ecgpaper.serve.server import serve; serve({host!r}, 8000, 1)")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**env, "ECGPAPER_ROOT": str(tmp_path), "ECGWEB_SECRET_KEY": "",
                                           "ECGWEB_PROXY": "direct"})
    assert res.returncode == 0, res.stderr
    assert "would exec gunicorn" in res.stderr
    if checked:
        assert "beyond loopback: Django's deployment checks say" in res.stderr
        assert "security.W004" in res.stderr  # no HSTS: what the proxy in webapp/README.md sets
    else:
        assert "deployment checks" not in res.stderr


def test_stored_copy_can_blank_the_header_band():
    from ecgpaper.config import HEADER_CROP_FRACTIONS
    from ecgpaper.serve.inference import stored_copy

    page = ecg_page(16, (1106, 786))
    top = round(HEADER_CROP_FRACTIONS[1] * page.height)
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        data = encode(page, fmt)
        kept, kept_ext = stored_copy(data)
        blanked, blanked_ext = stored_copy(data, blank_header=True)
        assert kept_ext == blanked_ext == ext
        kept = np.asarray(Image.open(io.BytesIO(kept)).convert("L"), float)
        blanked = np.asarray(Image.open(io.BytesIO(blanked)).convert("L"), float)
        assert kept[:top].min() < 128  # the header text is there ...
        assert blanked[:top - 2].min() >= 250  # ... and painted white when asked
        assert np.abs(blanked[top + 2:] - kept[top + 2:]).mean() < 1  # the grid is untouched


# --------------------------------------------------------------------------
# two instances behind one PostgreSQL database (webapp/README.md)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_instances(exported_model, postgres, tmp_path_factory):
    """Two ``serve`` instances (one worker each) on one PostgreSQL database, with one
    shared upload folder and secret key, as webapp/README.md deploys them;
    10 requests a minute per user."""
    with running_instances(tmp_path_factory.mktemp("two_instances"), 2, postgres=postgres,
                           env={"ECGWEB_MODELS_DIR": str(exported_model),
                                "ECGWEB_THROTTLE_USER": "10/min", "ECGWEB_THROTTLE_UPLOAD": "10/min"}) as servers:
        yield servers


def test_two_instances_lose_no_concurrent_upload(two_instances):
    import threading

    a, b = two_instances
    names = [f"client{i}" for i in range(8)]
    tokens = a.create_users(*names)
    pages = {name: [encode(ecg_page(10 * i + k, (600, 426)), "JPEG") for k in range(3)]
             for i, name in enumerate(names)}
    answers: dict[str, list] = {name: [] for name in names}

    def client(i: int, name: str) -> None:
        for k, page in enumerate(pages[name]):
            srv = two_instances[(i + k) % 2]  # alternate between the instances
            r = srv.upload(page, tokens[name], name=f"{name}-{k}.jpg", query="?explain=0")
            answers[name].append((r.status_code, r.json().get("id")))

    threads = [threading.Thread(target=client, args=(i, name)) for i, name in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [status for got in answers.values() for status, _ in got]
    assert statuses == [201] * 24, answers
    ids = {rid for got in answers.values() for _, rid in got}
    assert len(ids) == 24  # no record lost or merged
    for name in names:  # each user sees all three, through either instance
        for srv in two_instances:
            listing = srv.get(f"{API}/classifications/", token=tokens[name]).json()
            assert sorted(r["id"] for r in listing["results"]) == sorted(rid for _, rid in answers[name])
    count = b.manage("shell", "-c", "from classifier.models import Classification; "
                                    "print(Classification.objects.filter(user__username__startswith="
                                    "'client').count())").strip().splitlines()[-1]
    assert count == "24"
    assert len([p for p in a.media.rglob("*") if p.is_file()]) >= 24


def test_a_users_limit_holds_across_instances(two_instances):
    a, b = two_instances
    token = a.create_users("tess")["tess"]
    answers = [two_instances[i % 2].get(f"{API}/classifications/", token=token).status_code
               for i in range(11)]
    assert answers == [200] * 10 + [429]  # 5 + 5 allowed, then the shared budget is spent
    for srv in two_instances:
        body = assert_error(srv.get(f"{API}/classifications/", token=token), 429, "throttled")
        assert "10/min per user" in body["detail"]


def test_a_record_made_through_one_instance_is_served_and_deleted_by_the_other(two_instances):
    a, b = two_instances
    token = a.create_users("uma")["uma"]
    made = a.upload(encode(ecg_page(21), "JPEG"), token, name="from-a.jpg").json()
    url = f"{API}/classifications/{made['id']}/"
    assert b.get(url, token=token).json() == {k: v for k, v in made.items() if k != "heatmap_png"}
    for suffix in ("image/", "heatmap/"):
        assert b.get(url + suffix, token=token).status_code == 200
    files = {p for p in a.media.rglob("*") if p.is_file()}
    r = requests.delete(b.url + url, headers=auth(token), timeout=10)
    assert r.status_code == 204
    assert_error(a.get(url, token=token), 404, "not_found")
    assert len(files - {p for p in a.media.rglob("*") if p.is_file()}) == 2

    # a browser session made on one instance is valid on the other (same key, sessions in the DB)
    s, headers = csrf_session(a)
    r = s.post(f"{a.url}{API}/auth/login/", json={"username": "uma", "password": "uma-pw-1234"},
               headers=headers, timeout=10)
    assert r.status_code == 200
    assert s.get(f"{b.url}{API}/auth/me/", timeout=10).json()["username"] == "uma"
