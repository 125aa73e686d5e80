"""The Kaggle download, against a fake client (no network here)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ecgpaper.config import KAGGLE_DATASET
from ecgpaper.data.discovery import discover
from ecgpaper.data.download import DOWNLOAD_MARKER, download_kaggle, is_downloaded, kaggle_credentials_present
from ecgpaper.errors import UserError


class FakeKaggleApi:
    """Mimics ``KaggleApi``: authenticate(), dataset_download_files(...) writing a zip."""

    def __init__(self, source: Path, *, auth_error=None, download_error=None, bad_zip=False):
        self.source, self.auth_error, self.download_error, self.bad_zip = source, auth_error, download_error, bad_zip
        self.calls = []

    def authenticate(self):
        self.calls.append("authenticate")
        if self.auth_error:
            raise self.auth_error

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
        self.calls.append(("download", dataset, unzip))
        if self.download_error:
            raise self.download_error
        archive = Path(path) / "ecg-analysis.zip"
        if self.bad_zip:
            archive.write_bytes(b"<html>rate limited</html>")
            return
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted(self.source.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(self.source).as_posix())


def test_download_unzips_the_archive_and_discovery_reads_it(real_like_tree, tmp_path):
    fake = FakeKaggleApi(real_like_tree)
    dest = download_kaggle(tmp_path / "kaggle", client=fake, log=lambda *_: None)
    assert fake.calls == ["authenticate", ("download", KAGGLE_DATASET, False)]
    assert is_downloaded(dest) and (dest / DOWNLOAD_MARKER).exists()
    assert discover(dest).counts() == {"MI": 26, "HMI": 26, "HB": 27, "NORM": 26}


def test_second_download_does_nothing_and_says_so(real_like_tree, tmp_path):
    fake = FakeKaggleApi(real_like_tree)
    dest = download_kaggle(tmp_path / "kaggle", client=fake, log=lambda *_: None)
    messages = []
    download_kaggle(dest, client=fake, log=messages.append)
    assert len(fake.calls) == 2  # no second authenticate/download
    assert "already downloaded" in messages[0]
    download_kaggle(dest, client=fake, force=True, log=lambda *_: None)
    assert len(fake.calls) == 4


@pytest.mark.parametrize("kwargs,match", [
    ({"auth_error": OSError("Could not find kaggle.json")}, "kaggle.json"),
    ({"download_error": ConnectionError("Name or service not known")}, "--data-root"),
    ({"bad_zip": True}, "not a valid zip"),
])
def test_client_failures_become_clear_messages_and_leave_nothing(real_like_tree, tmp_path, kwargs, match):
    dest = tmp_path / "kaggle"
    with pytest.raises(UserError, match=match):
        download_kaggle(dest, client=FakeKaggleApi(real_like_tree, **kwargs), log=lambda *_: None)
    assert not dest.exists()
    assert not list(tmp_path.glob(".download-*"))


def test_credentials_are_looked_for_where_the_client_looks(tmp_path):
    assert not kaggle_credentials_present(env={}, home=tmp_path)
    assert kaggle_credentials_present(env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path)
    assert kaggle_credentials_present(env={"KAGGLE_API_TOKEN": "t"}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials_present(env={}, home=tmp_path)
    other = tmp_path / "cfg"
    other.mkdir()
    assert not kaggle_credentials_present(env={"KAGGLE_CONFIG_DIR": str(other)}, home=tmp_path)


def test_cli_without_credentials_fails_fast_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), ECGPAPER_ROOT=str(tmp_path / "proj"))
    res = subprocess.run([sys.executable, "-m", "ecgpaper", "download"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "kaggle.json" in res.stderr and "--data-root" in res.stderr
