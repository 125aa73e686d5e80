"""Download the real dataset (Kaggle ``evilspirit05/ecg-analysis``, paper section 3.1).

Uses the official ``kaggle`` client. Importing ``kaggle`` authenticates at
import time, so it is imported inside :func:`download_kaggle`, after the
credentials were checked, and any client error becomes a :class:`UserError`
whose message says what to do. Idempotent: a finished download leaves
``DOWNLOAD_MARKER`` and a second call does nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ecgpaper import paths
from ecgpaper.config import KAGGLE_DATASET
from ecgpaper.errors import UserError

DOWNLOAD_MARKER = ".ecgpaper-download.json"

HOW_TO_CREDENTIALS = (
    "Kaggle credentials not found. Either\n"
    "  1. create an API token at https://www.kaggle.com/settings (\"Create New Token\") and save\n"
    "     the downloaded kaggle.json as ~/.kaggle/kaggle.json (chmod 600), or\n"
    "  2. export KAGGLE_USERNAME=<user> and KAGGLE_KEY=<key> (or KAGGLE_API_TOKEN=<token>), or\n"
    "  3. download the archive elsewhere, unzip it, and pass its folder with --data-root PATH\n"
    "     to every command (no download needed).\n"
    "Without any of these, `./run_all.sh` uses the synthetic twin (numbers are NOT the paper's)."
)


def kaggle_credentials_present(env: dict | None = None, home: Path | None = None) -> bool:
    """True if the kaggle client will find credentials (env vars or a config file)."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or (home or Path.home()) / ".kaggle")
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def _default_client():
    # import here: ``import kaggle`` authenticates on import (see module doc)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:  # pragma: no cover - kaggle is a dependency
        raise UserError(f"the kaggle client is not installed ({exc}); run ./run_all.sh once "
                        "or `pip install kaggle`") from None
    return KaggleApi()


def is_downloaded(dest: Path) -> bool:
    return (Path(dest) / DOWNLOAD_MARKER).is_file()


def download_kaggle(dest: Path | str | None = None, *, dataset: str = KAGGLE_DATASET,
                    client=None, force: bool = False, log=print) -> Path:
    """Fetch and unzip ``dataset`` into ``dest``; return ``dest``.

    ``client``: an object with the ``KaggleApi`` methods ``authenticate()`` and
    ``dataset_download_files(dataset, path=..., unzip=False, quiet=...)`` (tests
    pass a fake). Raises :class:`UserError` (never a traceback) when
    credentials or the network are missing.
    """
    dest = Path(dest) if dest else paths.KAGGLE_RAW
    if is_downloaded(dest) and not force:
        log(f"{dataset} is already downloaded in {dest} (delete it or use --force to fetch again)")
        return dest
    if client is None:
        if not kaggle_credentials_present():
            raise UserError(HOW_TO_CREDENTIALS)
        client = _default_client()
    try:
        client.authenticate()
    except (Exception, SystemExit) as exc:
        raise UserError(f"Kaggle rejected the credentials ({exc}).\n{HOW_TO_CREDENTIALS}") from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        tmp = Path(tmp)
        log(f"downloading {dataset} from Kaggle into {dest} ...")
        try:
            client.dataset_download_files(dataset, path=str(tmp), unzip=False, quiet=False)
        except (Exception, SystemExit) as exc:
            raise UserError(
                f"could not download {dataset} from Kaggle ({type(exc).__name__}: {exc}).\n"
                "Check the network and that you accepted the dataset's terms on kaggle.com, "
                "or download it elsewhere and pass its unzipped folder with --data-root PATH."
            ) from None
        zips = sorted(tmp.glob("*.zip"))
        if not zips:
            raise UserError(f"the Kaggle client returned no archive for {dataset}; try again "
                            "or pass an existing copy with --data-root PATH")
        archive = zips[0]
        unpacked = tmp / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)  # zipfile strips absolute paths and '..'
        except zipfile.BadZipFile as exc:
            raise UserError(f"the downloaded archive is not a valid zip ({exc}); run the "
                            "download again with --force") from None
        info = {"dataset": dataset, "archive": archive.name,
                "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                "n_files": sum(1 for p in unpacked.rglob("*") if p.is_file())}
        (unpacked / DOWNLOAD_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpacked, dest)
    log(f"downloaded {info['n_files']} files into {dest}")
    return dest
