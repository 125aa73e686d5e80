"""The React page (paper section 3.4, Fig. 4) in a real browser: Debian's headless
Chromium, driven by Playwright, against a live server (``ecgpaper.serve.server``:
Django + gunicorn) serving a tiny model trained on the synthetic twin.

Sign in, read the model card (calibrated probabilities, what the page gate refuses), upload
a twin ECG image, see its class, four probability bars and the
Grad-CAM overlay, find it in the history, upload a text file and get a sentence
a clinician understands, upload a photo and be told it is not an ECG page (the
page gate, issue 22 item 9), delete the ECG, sign out; all under the server's
Content-Security-Policy (no violation reported). Leaves a screenshot in
results/webapp/screenshot.png, which REPORT.md then shows as Fig. 4
(report.webpage_screenshot).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support.images import not_ecg_uploads
from support.model import train_and_export_smoke_model
from support.server import REPO, LiveServer, password_for

from ecgpaper.config import CLASS_NAMES

FRONTEND = REPO / "webapp" / "frontend"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "results" / "webapp" / "screenshot.png"
USER = "clinician"
PASSWORD = password_for(USER)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                     "(apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """A project root holding the synthetic twin and an exported smoke model (~40 s)."""
    return train_and_export_smoke_model(tmp_path_factory.mktemp("webapp-browser"))


@pytest.fixture(scope="module")
def frontend_dist() -> Path:
    """webapp/frontend/dist, built with npm when missing or older than the sources."""
    index = FRONTEND / "dist" / "index.html"
    sources = [p for p in (FRONTEND / "src").rglob("*") if p.is_file()]
    sources += [FRONTEND / "index.html", FRONTEND / "vite.config.js", FRONTEND / "package-lock.json"]
    if index.exists() and index.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return index.parent
    steps = [["npm", "run", "build"]]
    if not (FRONTEND / "node_modules").is_dir():
        steps.insert(0, ["npm", "ci", "--no-audit", "--no-fund"])
    for cmd in steps:
        try:
            res = subprocess.run(cmd, cwd=FRONTEND, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            pytest.fail("the front end is not built and npm is missing: install Node.js 20.19+ "
                        "and run `npm ci && npm run build` in webapp/frontend")
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return index.parent


@pytest.fixture(scope="module")
def web_server(trained_root, frontend_dist):
    """``ecgpaper.serve.server.serve`` (migrate, collectstatic, gunicorn) with the smoke model,
    plus a user to sign in with; yields the base URL."""
    with LiveServer(trained_root, {"ECGWEB_FRONTEND_DIST": str(frontend_dist)}) as server:
        server.create_users(USER)
        yield server.url


def test_a_clinician_classifies_an_ecg_in_the_browser(web_server, trained_root):
    from playwright.sync_api import expect, sync_playwright

    ecg = sorted((trained_root / "data/raw/synthetic-smoke/ECG_DATA/test").rglob("*.jpg"))[0]
    page_errors: list[str] = []
    csp_violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("console", lambda msg: csp_violations.append(msg.text)
                    if "Content Security Policy" in msg.text else None)
            page.goto(web_server + "/")

            # sign in (session + CSRF)
            expect(page.get_by_text("Research tool — not for clinical diagnosis.")).to_be_visible()
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text(f"Signed in as {USER}")).to_be_visible()
            expect(page.get_by_role("note")).to_contain_text("trained on SYNTHETIC ECG images")
            expect(page.get_by_text(re.compile(r"test accuracy \d+\.\d %"))).to_be_visible()
            expect(page.get_by_text("Only 12-lead ECG report pages are classified.", exact=False)).to_contain_text(
                "Refused without a class: blank or near-blank pages, photos")
            # the trained run's temperature scaling: the card says the probabilities are calibrated
            expect(page.get_by_text(re.compile(r"^The probabilities are calibrated: temperature scaling "
                                               r"\(T = \d+\.\d\d\) fitted on the run's \d+ validation pages"))
                   ).to_be_visible()

            # upload a twin ECG through the labelled file input
            page.get_by_label(re.compile("Choose ECG image")).set_input_files(ecg)
            expect(page.get_by_alt_text(f"Preview of the chosen file {ecg.name}")).to_be_visible()
            page.get_by_role("button", name="Analyse ECG").click()

            result = page.get_by_role("region", name="Result")
            expect(result.get_by_role("meter")).to_have_count(4, timeout=120_000)
            expect(page.get_by_role("status")).to_contain_text("Analysis complete")
            predicted = result.locator(".prediction strong").inner_text()
            assert predicted in CLASS_NAMES.values()
            labels = result.locator(".bar-label").all_inner_texts()
            assert sorted(labels) == sorted(f"{name} ({code})" for code, name in CLASS_NAMES.items())
            assert labels[0].startswith(predicted)  # most probable first
            percents = [float(re.fullmatch(r"(\d{1,3}\.\d) %", t).group(1))
                        for t in result.locator(".bar-value").all_inner_texts()]
            assert percents == sorted(percents, reverse=True) and abs(sum(percents) - 100) < 0.5
            heatmap = result.get_by_alt_text(re.compile("Grad-CAM heat map"))
            expect(heatmap).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
            expect(result.get_by_text("Grad-CAM: regions that most influenced the prediction")).to_be_visible()
            loaded = "img => img.complete && img.naturalWidth > 0"
            page.wait_for_function(loaded, arg=heatmap.element_handle())
            page.wait_for_function(loaded, arg=result.get_by_alt_text(re.compile("Uploaded 12-lead ECG"))
                                   .element_handle())
            expect(result).to_contain_text("Inference time")

            # the history shows the upload (as "upload.jpg": file names, which may name the
            # patient, are not kept by default); opening it loads the stored heat map
            history = page.get_by_role("region", name="History")
            entry = history.get_by_role("button", name=re.compile(re.escape("upload" + ecg.suffix)))
            expect(entry).to_have_count(1)
            expect(entry).to_have_attribute("aria-current", "true")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            entry.click()
            expect(heatmap).to_have_attribute("src", re.compile(r"/api/v1/classifications/\d+/heatmap/$"))
            page.wait_for_function(loaded, arg=heatmap.element_handle())

            # a text file gets a friendly sentence plus the server's detail
            page.get_by_label(re.compile("Choose ECG image")).set_input_files(
                {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an ECG\n"})
            page.get_by_role("button", name="Analyse ECG").click()
            alert = page.get_by_role("alert")
            expect(alert).to_contain_text("This file is not an ECG image we can read "
                                          "(use JPEG, PNG, WebP or TIFF).")
            expect(alert).to_contain_text("Details: ")

            # a picture that is not an ECG page (a photo) is refused by the page gate, with no result
            page.get_by_label(re.compile("Choose ECG image")).set_input_files(
                {"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": not_ecg_uploads()["photo.jpg"]})
            page.get_by_role("button", name="Analyse ECG").click()
            expect(alert).to_contain_text("This image is not a 12-lead ECG report page, so it was not analysed.")
            expect(alert).to_contain_text("no ECG grid with traces was found")
            expect(history.get_by_role("button", name=re.compile("photo"))).to_have_count(0)  # nothing stored
            expect(entry).to_have_count(1)

            # delete the ECG (after the browser's confirmation): gone from the history
            entry.click()
            page.once("dialog", lambda dialog: dialog.accept())
            result.get_by_role("button", name="Delete this ECG").click()
            expect(result).to_have_count(0)
            expect(history.get_by_text("No ECGs analysed yet.")).to_be_visible()

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        finally:
            browser.close()
    assert page_errors == [] and csp_violations == []
