"""Uploads that are not 12-lead ECG report pages, for the page gate's tests
(issue 22, item 9): a blank page, noise, a photo (the one matplotlib ships) and a
letter; and one that is (a twin page). Test equipment, like the rest of tests/support."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def ecg_page_png(seed: int = 0, size=(1106, 786), fmt: str = "PNG") -> bytes:
    """A page of the synthetic twin (what the page gate accepts), as PNG (or ``fmt``) bytes."""
    from ecgpaper.config import CLASS_CODES
    from ecgpaper.data.twin_render import render_page

    return encode(render_page(CLASS_CODES[seed % 4], np.random.default_rng(seed), size,
                              patient_id=f"T{seed:04d}", date="2024-01-01 10:00"), fmt)


def letter() -> Image.Image:
    """A typed letter on white A4 paper (150 dpi)."""
    page = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=22)
    for k, y in enumerate(range(150, 1600, 34)):
        draw.text((120, y), "Dear colleague, thank you for seeing this patient " * (1 + k % 2), font=font,
                  fill=(0, 0, 0))
    return page


def not_ecg_uploads() -> dict[str, bytes]:
    """name -> upload bytes."""
    import matplotlib

    rng = np.random.default_rng(0)
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {"blank.png": encode(Image.new("RGB", (1100, 780), "white"), "PNG"),
            "noise.png": encode(Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)), "PNG"),
            "photo.jpg": photo.read_bytes(),
            "letter.jpg": encode(letter())}
