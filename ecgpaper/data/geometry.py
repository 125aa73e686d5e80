"""Page geometry, in one place: where the ECG grid, the header and the footer lie on
a 12-lead report page (docs/design_notes.md), as pixels of a page
(:func:`crop_box`) and as fractions of the model input (:func:`page_regions`), and
the input's pixels per millimetre of paper (:func:`input_geometry`). Preprocessing,
the duplicate audit, Grad-CAM's header shares and the robustness corruptions all
read it from here."""
from __future__ import annotations

from ecgpaper.config import HEADER_CROP_FRACTIONS, PAGE_WIDTH_MM, REFERENCE_PAGE_SIZE

PAGE_HEIGHT_MM = PAGE_WIDTH_MM * REFERENCE_PAGE_SIZE[1] / REFERENCE_PAGE_SIZE[0]


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The grid-only box of docs/design_notes.md, scaled to a page of ``width`` x ``height``."""
    fl, ft, fr, fb = HEADER_CROP_FRACTIONS
    return (round(fl * width), round(ft * height), round(fr * width), round(fb * height))


def page_regions(crop: bool, fit: str = "resize", page_size=REFERENCE_PAGE_SIZE) -> dict:
    """Header band, footer band and ECG grid as (left, top, right, bottom)
    fractions of the MODEL INPUT (None where a band is not in the input)."""
    fl, ft, fr, fb = HEADER_CROP_FRACTIONS
    width, height = page_size
    if crop:  # the input shows the grid only
        content_w, content_h = (fr - fl) * width, (fb - ft) * height
    else:
        content_w, content_h = width, height
    if fit == "letterbox":  # the page keeps its aspect ratio, padded to a square
        scale = max(content_w, content_h)
        cw, ch = content_w / scale, content_h / scale
        x0, y0 = (1 - cw) / 2, (1 - ch) / 2
    else:
        cw = ch = 1.0
        x0 = y0 = 0.0

    def place(box):  # page-content fractions -> input fractions
        left, top, right, bottom = box
        return (x0 + left * cw, y0 + top * ch, x0 + right * cw, y0 + bottom * ch)

    if crop:
        return {"header": None, "footer": None, "grid": place((0.0, 0.0, 1.0, 1.0))}
    return {"header": place((0.0, 0.0, 1.0, ft)), "footer": place((0.0, fb, 1.0, 1.0)),
            "grid": place((fl, ft, fr, fb))}


def input_geometry(size: int, crop: bool = False, fit: str = "resize") -> dict:
    """Pixels per mm of paper (``px_per_mm_y``, ``px_per_mm_x``) of an input of
    ``size`` x ``size`` made by ``preprocess.prepare_image``, and the ECG grid's
    box as fractions of the input (``grid``: left, top, right, bottom)."""
    fl, ft, fr, fb = HEADER_CROP_FRACTIONS
    w_mm, h_mm = (PAGE_WIDTH_MM * (fr - fl), PAGE_HEIGHT_MM * (fb - ft)) if crop else (PAGE_WIDTH_MM,
                                                                                        PAGE_HEIGHT_MM)
    if fit == "letterbox":
        py = px = size / max(w_mm, h_mm)
    else:
        py, px = size / h_mm, size / w_mm
    return {"px_per_mm_y": py, "px_per_mm_x": px, "grid": page_regions(crop, fit)["grid"]}
