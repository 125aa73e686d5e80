"""Decode, crop and resize ECG pages once, into a uint8 cache (paper section 3.1.1).

The paper resizes every page to 224 x 224 ("or pads/crops minimally"). Offered
here as settings, recorded with the cache:

- ``fit="resize"`` squashes the ~1.41:1 page to a square (the paper's default);
  ``fit="letterbox"`` keeps the aspect ratio and pads with white paper;
- ``crop=True`` keeps only the ECG grid (docs/design_notes.md, "Page geometry"), dropping the header
  band with the patient id and the footer with date, rate and device, so the
  model cannot learn the text.

JPEG pages are decoded in the DCT domain at a reduced scale (Pillow's
``Image.draft``), which is what makes the cache several times faster than
decoding 2213 x 1572 pixels and then resizing. The same :func:`load_image`
serves the web service, so training and serving cannot disagree.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm  # text bar: tqdm.auto warns in kernels without ipywidgets

from ecgpaper import paths
from ecgpaper.config import HEADER_CROP_FRACTIONS
from ecgpaper.data.geometry import crop_box
from ecgpaper.errors import UserError

#: bump when the decoding changes, so old caches are rebuilt
PREPROCESS_VERSION = 1
FITS = ("resize", "letterbox")
PAPER_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class PreprocessSettings:
    size: int = 224
    fit: str = "resize"
    crop: bool = False

    def __post_init__(self):
        if self.fit not in FITS:
            raise UserError(f"fit must be one of {FITS}, not {self.fit!r}")
        if not 16 <= int(self.size) <= 1024:
            raise UserError(f"image size {self.size} is out of range (16-1024)")

    @property
    def tag(self) -> str:
        return f"{self.size}px_{self.fit}_{'crop' if self.crop else 'full'}"

    def to_dict(self) -> dict:
        return {**asdict(self), "version": PREPROCESS_VERSION}


#: EXIF orientations that swap width and height (5-8: transposed or rotated by 90 degrees)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
#: like Pillow's ``reducing_gap``: keep at least twice the pixels the final resize needs
_REDUCING_GAP = 2


def _pixels_needed(settings: PreprocessSettings) -> tuple[int, int]:
    """Width and height of the full (upright) page that still leave ``settings.size``
    pixels in the region kept (all of it, or the grid box of docs/design_notes.md when cropping)."""
    n = settings.size
    if not settings.crop:
        return n, n
    fl, ft, fr, fb = HEADER_CROP_FRACTIONS
    return math.ceil(n / (fr - fl)), math.ceil(n / (fb - ft))


def decode_reduced(img: Image.Image, settings: PreprocessSettings) -> Image.Image:
    """Decode ``img`` at the smallest scale that still serves ``settings``: the only
    step that reads compressed data (so the only one that can fail on a damaged file).

    Memory stays bounded by the decoded file itself: JPEGs are decoded in the DCT
    domain at a reduced scale (``Image.draft``); other formats are shrunk right after
    decoding (``Image.reduce``, or a box filter for modes ``reduce`` lacks), before
    any rotation or mode conversion could copy the full image. The result keeps
    its mode and EXIF orientation for :func:`finish_image`.
    """
    need_w, need_h = _pixels_needed(settings)
    if img.getexif().get(0x0112, 1) in _SWAPPING_ORIENTATIONS:
        need_w, need_h = need_h, need_w  # the stored picture is on its side
    if img.format in ("JPEG", "MPO"):  # MPO: phone cameras' multi-picture JPEG
        # (docs/design_notes.md: never decode 2213 x 1572 to make 224 x 224)
        img.draft("RGB", (need_w, need_h))
    img.load()
    factor = min(img.width // (_REDUCING_GAP * need_w), img.height // (_REDUCING_GAP * need_h))
    if factor < 2:
        return img
    if img.mode in ("P", "1"):  # palette indices cannot be averaged: colours first
        has_alpha = img.mode == "P" and ("transparency" in img.info or img.palette.mode == "RGBA")
        img = img.convert("RGBA" if has_alpha else "RGB")
    size = (img.width // factor, img.height // factor)
    if img.mode.startswith("I;16"):  # Image.reduce has no 16-bit mode; a box filter is the same
        return img.resize(size, Image.Resampling.BOX)
    return img.reduce(factor)


def finish_image(img: Image.Image, settings: PreprocessSettings) -> np.ndarray:
    """A (reduced) decoded image -> (size, size, 3) uint8 RGB, per ``settings``.

    Handles what real uploads contain: EXIF rotation, palette/grey/CMYK/RGBA
    (alpha composited on white paper), 16-bit images (scaled to 8 bits in float32).
    """
    n = settings.size
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)  # untagged images are not copied
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit and float grey
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        lo, hi = min(float(arr.min()), 0.0), float(arr.max())
        img = Image.fromarray(((arr - lo) * np.float32(255.0 / ((hi - lo) or 1.0))).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, PAPER_WHITE + (255,))
        img = Image.alpha_composite(bg, rgba)
    img = img.convert("RGB")
    if settings.crop:
        img = img.crop(crop_box(*img.size))
    if settings.fit == "letterbox":
        img = ImageOps.pad(img, (n, n), method=Image.Resampling.BILINEAR, color=PAPER_WHITE)
    else:
        img = img.resize((n, n), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.uint8)


def prepare_image(img: Image.Image, settings: PreprocessSettings) -> np.ndarray:
    """An opened image -> (size, size, 3) uint8 RGB, per ``settings``
    (:func:`decode_reduced`, then :func:`finish_image`)."""
    return finish_image(decode_reduced(img, settings), settings)


def load_image(path: str | Path, settings: PreprocessSettings) -> np.ndarray:
    """Read one file -> (size, size, 3) uint8 (see :func:`prepare_image`)."""
    with Image.open(path) as img:
        return prepare_image(img, settings)


def load_image_naive(path: str | Path, size: int) -> np.ndarray:
    """The obvious way (full decode, then resize): the benchmark's baseline."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


# --------------------------------------------------------------------------
# The cache: one .npy per (dataset, size, fit, crop), keyed by the inputs
# --------------------------------------------------------------------------

@dataclass
class ImageCache:
    """Decoded images of a dataset, one row per distinct file content (sha256)."""
    array_path: Path
    index: pd.DataFrame  # path, sha256, row
    settings: PreprocessSettings
    key: str

    def images(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.array_path, mmap_mode="r" if mmap else None)

    def rows_for(self, rel_paths) -> np.ndarray:
        """Cache rows of the given dataset-relative paths (in that order)."""
        lookup = pd.Series(self.index["row"].to_numpy(), index=self.index["path"])
        missing = [p for p in rel_paths if p not in lookup.index]
        if missing:
            raise UserError(f"{len(missing)} files of the manifest are not in the cache "
                            f"(e.g. {missing[0]!r}); rebuild it with `python -m ecgpaper cache`.")
        return lookup.loc[list(rel_paths)].to_numpy()


def cache_key(inventory: pd.DataFrame, settings: PreprocessSettings) -> str:
    h = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for sha in sorted(set(inventory["sha256"])):
        h.update(sha.encode())
    return h.hexdigest()[:16]


def cache_files(dataset: str, settings: PreprocessSettings, key: str) -> tuple[Path, Path]:
    base = paths.cache_dir(dataset) / f"{settings.tag}_{key}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _load_many(args: tuple[list[str], PreprocessSettings]) -> tuple[np.ndarray, list[str]]:
    files, settings = args
    out = np.zeros((len(files), settings.size, settings.size, 3), np.uint8)
    errors = []
    for i, f in enumerate(files):
        try:
            out[i] = load_image(f, settings)
            errors.append("")
        except Exception as exc:  # reported, never fatal
            errors.append(f"{type(exc).__name__}: {exc}")
    return out, errors


def build_cache(inventory: pd.DataFrame, data_root: Path | str, dataset: str,
                settings: PreprocessSettings, *, workers: int | None = None,
                progress: bool = True, force: bool = False) -> ImageCache:
    """Decode every readable image once (each distinct sha256 once) into a
    ``(n, size, size, 3)`` uint8 ``.npy``, reused until its inputs change."""
    data_root = Path(data_root)
    inv = inventory[inventory["readable"]].sort_values("path", kind="stable")
    key = cache_key(inv, settings)
    npy, meta = cache_files(dataset, settings, key)
    if npy.exists() and meta.exists() and not force:
        info = json.loads(meta.read_text())
        return ImageCache(npy, pd.DataFrame(info["index"]), settings, key)

    distinct = inv.drop_duplicates("sha256", keep="first").reset_index(drop=True)
    row_of_sha = {sha: i for i, sha in enumerate(distinct["sha256"])}
    files = [str(data_root / p) for p in distinct["path"]]
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, len(files) // (workers * 4) or 1))
    batches = [files[i:i + chunk] for i in range(0, len(files), chunk)]

    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.tmp-{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(files), settings.size, settings.size, 3))
    failures = []
    bar = tqdm(total=len(files), desc=f"cache {settings.tag}", unit="img", disable=not progress)
    start = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for batch, (block, errs) in zip(batches, pool.map(_load_many, [(b, settings) for b in batches])):
            arr[start:start + len(batch)] = block
            failures += [(f, e) for f, e in zip(batch, errs) if e]
            start += len(batch)
            bar.update(len(batch))
    bar.close()
    arr.flush()
    del arr
    if failures:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{len(failures)} images failed to decode although the inventory "
                        f"found them readable (first: {failures[0]}); rerun "
                        "`python -m ecgpaper inventory` and then `cache`.")
    os.replace(tmp, npy)
    index = pd.DataFrame({"path": inv["path"].to_numpy(), "sha256": inv["sha256"].to_numpy(),
                          "row": [row_of_sha[s] for s in inv["sha256"]]})
    info = {"dataset": dataset, "settings": settings.to_dict(), "key": key,
            "data_root": str(data_root), "n_files": int(len(inv)), "n_rows": len(files),
            "shape": [len(files), settings.size, settings.size, 3],
            "index": index.to_dict("list")}
    paths.atomic_write_text(meta, json.dumps(info, sort_keys=True) + "\n")
    return ImageCache(npy, index, settings, key)
