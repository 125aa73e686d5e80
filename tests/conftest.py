"""Shared fixtures: every test writes into its own temporary project root, and
``real_like_tree`` builds a small archive with the real dataset's mess
(long folder names with spaces, parentheses and '=', several copies, stray
files, a truncated JPEG, duplicates)."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "agg")

from ecgpaper import paths  # noqa: E402
from ecgpaper.config import FILE_PREFIXES, KAGGLE_CLASS_FOLDERS  # noqa: E402


def point_paths(monkeypatch, root: Path) -> Path:
    """Make ``ecgpaper.paths`` (and subprocesses, via ECGPAPER_ROOT) use ``root``."""
    monkeypatch.setattr(paths, "ROOT", root)
    for name, sub in (("DATA", "data"), ("RAW", "data/raw"), ("CACHE", "data/cache"),
                      ("RESULTS", "results"), ("FIGURES", "figures"), ("MODELS", "models"),
                      ("BENCHMARKS", "results/benchmarks"), ("KAGGLE_RAW", "data/raw/kaggle")):
        monkeypatch.setattr(paths, name, root / sub)
    monkeypatch.setenv("ECGPAPER_ROOT", str(root))
    return root


def smoke_notebook_run(tmp_path_factory, only=None) -> Path:
    """Where the smoke-profile notebook run lives: the one ./run_tests.sh made under
    nbval (ECGPAPER_NOTEBOOK_RUN), else a fresh papermill run of ``only`` (all if None)."""
    given = os.environ.get("ECGPAPER_NOTEBOOK_RUN")
    if given:
        return Path(given)
    from ecgpaper.runner import run_notebooks

    root = tmp_path_factory.mktemp("notebook-run")
    mp = pytest.MonkeyPatch()
    point_paths(mp, root)
    try:
        run_notebooks("smoke", only=only, log=lambda *_: None)
    finally:
        mp.undo()
    return root


@pytest.fixture(autouse=True)
def project_root(tmp_path, monkeypatch):
    """Point data/, results/, figures/, models/ at a fresh temporary folder. The
    tests run on CPUs by design: the GPU profiles' check is allowed past
    (ECGPAPER_ALLOW_CPU=1) except where a test deletes it to test the check.
    Runs train inline (ECGPAPER_EXECUTOR=inline) unless a test asks for processes."""
    monkeypatch.setenv("ECGPAPER_ALLOW_CPU", "1")
    # runs train in the test's own process (quicker for unit tests, and monkeypatchable);
    # tests/test_engine.py and the notebook runs use a process per run, the default
    monkeypatch.setenv("ECGPAPER_EXECUTOR", "inline")
    for name in ("ECGPAPER_JOBS", "ECGPAPER_RAY_ADDRESS", "ECGPAPER_RUN_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    return point_paths(monkeypatch, tmp_path / "project")


def ecg_like_jpeg(seed: int, size=(220, 156), quality=90) -> bytes:
    """A small image with a unique blocky pattern (distinct perceptual hash per seed)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def real_like_tree(tmp_path) -> Path:
    """An archive shaped like Kaggle's ``evilspirit05/ecg-analysis``.

    ECG_DATA copy: per class 6 distinct images in test/ (``X(1)..X(6)``), each
    duplicated once inside test/ (``X(7)..X(12)``, the real archive's regular
    pattern), and train/ holding 10 distinct images of its own plus a byte copy
    of test images 1-2 (cross-folder leakage) and a re-encoded (near) copy of
    test image 3. Plus a smaller second copy, stray files, a truncated JPEG,
    an upper-case extension and a PNG.
    """
    root = tmp_path / "kaggle-archive"
    seed = 0
    for ci, (code, folder) in enumerate(KAGGLE_CLASS_FOLDERS.items()):
        prefix = FILE_PREFIXES[code]
        test_imgs = [ecg_like_jpeg(1000 * ci + k) for k in range(6)]
        for k, data in enumerate(test_imgs + test_imgs, start=1):
            _write(root / "ECG_DATA" / "test" / folder / f"{prefix}({k}).jpg", data)
        train = [ecg_like_jpeg(1000 * ci + 100 + k) for k in range(10)]
        train += [test_imgs[0], test_imgs[1]]
        for k, data in enumerate(train, start=1):
            ext = ".JPG" if k == 5 else ".jpg"
            _write(root / "ECG_DATA" / "train" / folder / f"{prefix}({k}){ext}", data)
        # a near duplicate of test image 3: same picture, other JPEG quality
        img = Image.open(io.BytesIO(test_imgs[2]))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=70)
        _write(root / "ECG_DATA" / "train" / folder / f"{prefix}(13).jpg", buf.getvalue())
        # a PNG copy-free extra image
        png = io.BytesIO()
        Image.open(io.BytesIO(ecg_like_jpeg(1000 * ci + 500))).save(png, "PNG")
        _write(root / "ECG_DATA" / "train" / folder / f"{prefix}(14).png", png.getvalue())
        # second, smaller copy of the data ("new version"), snake-case-free long names
        for k in range(3):
            _write(root / "ecg_data_new_version" / "ecg data new version" / folder / f"{prefix}({k + 1}).jpg",
                   test_imgs[k])
        seed += 1
    hb = KAGGLE_CLASS_FOLDERS["HB"]
    # stray files of real archives
    _write(root / "__MACOSX" / "ECG_DATA" / "train" / hb / "._HB(1).jpg", b"\x00\x05\x16\x07junk")
    _write(root / "ECG_DATA" / "train" / "desktop.ini", b"[.ShellClassInfo]\n")
    _write(root / "ECG_DATA" / "train" / hb / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(root / "ECG_DATA" / "train" / hb / "HB(1).jpg:Zone.Identifier", b"[ZoneTransfer]\nZoneId=3\n")
    _write(root / "ECG_DATA" / "readme.txt", b"ECG images\n")
    # a truncated JPEG with a real image name
    full = ecg_like_jpeg(99999, size=(400, 300))
    _write(root / "ECG_DATA" / "train" / hb / "HB(99).jpg", full[: len(full) // 3])
    return root


@pytest.fixture
def copy_tree():
    def _copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst
    return _copy


@pytest.fixture
def gate_without_data(monkeypatch):
    """For registered runs without images (export tests): their export gets the tiny model's page gate."""
    from support.model import tiny_gate

    monkeypatch.setattr("ecgpaper.runs.export.calibrate_page_gate", lambda ws, config: tiny_gate())
