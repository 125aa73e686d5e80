"""One 12-lead ECG report page of the synthetic twin (``ecgpaper.data.synthetic``):
the leads of ``twin_physiology`` drawn on a pink millimetre grid at 25 mm/s and
10 mm/mV, with a header and footer outside the crop box and the page's small
rotation, scale and shading. Header, footer, colours and layout are drawn the
same way for every class: the class lives in the waveforms only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ecgpaper.config import CLASS_CODES, HEADER_CROP_FRACTIONS, PAGE_WIDTH_MM, REFERENCE_PAGE_SIZE
from ecgpaper.data.twin_physiology import SAMPLE_RATE_HZ, simulate_leads

# --------------------------------------------------------------------------
# Paper (docs/design_notes.md, "Page geometry")
# --------------------------------------------------------------------------
SEGMENT_SECONDS = 2.5
PAPER_SPEED_MM_S = 25.0
GAIN_MM_PER_MV = 10.0
LEAD_IN_MM = 5.0  # left of the traces: the 1 mV calibration pulse
MAX_ROTATION_DEG = 1.0
MAX_SCALE_DEVIATION = 0.02

#: Rows of the report: 3 x 4 lead segments of 2.5 s, then a 10 s lead II strip.
LEAD_ROWS = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
#: the twelve leads a page shows, in its order
LEAD_NAMES = tuple(lead for row in LEAD_ROWS for lead in row)

_HOSPITALS = ("Cardiac Care Unit", "Heart Institute", "City Hospital ECG Lab", "Department of Cardiology")
_DEVICES = ("CardioTrace 12", "PulseScribe 1200", "VectorLine E12", "HeartPrint 600")


@functools.lru_cache(maxsize=64)
def _font(size: int):
    return ImageFont.load_default(size=max(6, size))


@dataclass
class _Geometry:
    """Grid rectangle (layout px), px per mm, and the small rotation/scale of the page."""

    x0: float
    y0: float
    x1: float
    y1: float
    px_per_mm: float
    matrix: np.ndarray  # 2x2: scale * rotation about the grid centre

    def place(self, points: np.ndarray) -> list:
        """Layout coordinates (N, 2) -> page coordinates, flattened for ImageDraw."""
        centre = np.array(((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2))
        return ((points - centre) @ self.matrix.T + centre).ravel().tolist()


def _geometry(page_size, rng: np.random.Generator, line_px: float) -> _Geometry:
    """Largest grid that stays inside the crop box under any allowed rotation and scale."""
    width, height = page_size
    left, top, right, bottom = (f * s for f, s in zip(HEADER_CROP_FRACTIONS, (width, height, width, height)))
    half_w, half_h = (right - left) / 2 - line_px - 1, (bottom - top) / 2 - line_px - 1
    c, s = np.cos(np.radians(MAX_ROTATION_DEG)), np.sin(np.radians(MAX_ROTATION_DEG))
    # a rectangle of half sizes (a, b) rotated by at most the max angle spans
    # (a c + b s, a s + b c): solve for the largest (a, b) that fits
    a, b = np.linalg.solve([[c, s], [s, c]], np.array((half_w, half_h)) / (1 + MAX_SCALE_DEVIATION))
    traces_mm = LEAD_IN_MM + len(LEAD_ROWS[0]) * SEGMENT_SECONDS * PAPER_SPEED_MM_S + 1
    px_per_mm = min(width / PAGE_WIDTH_MM, 2 * a / traces_mm)
    angle = np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    scale = 1 + rng.uniform(-MAX_SCALE_DEVIATION, MAX_SCALE_DEVIATION)
    matrix = scale * np.array(((np.cos(angle), -np.sin(angle)), (np.sin(angle), np.cos(angle))))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return _Geometry(cx - a, cy - b, cx + a, cy + b, px_per_mm, matrix)


def _shade(rgb, brightness: float) -> tuple:
    return tuple(int(min(255, round(v * brightness))) for v in rgb)


def _draw_grid(draw: ImageDraw.ImageDraw, geo: _Geometry, rng: np.random.Generator, paper, brightness) -> None:
    """Pink millimetre grid: thin 1 mm lines, thick 5 mm lines, random phase."""
    thin = _shade((246 + rng.integers(-4, 5), 196 + rng.integers(-8, 9), 204 + rng.integers(-8, 9)), brightness)
    thick = _shade((234 + rng.integers(-6, 7), 140 + rng.integers(-12, 13), 160 + rng.integers(-12, 13)), brightness)
    p = geo.px_per_mm
    corners = np.array(((geo.x0, geo.y0), (geo.x1, geo.y0), (geo.x1, geo.y1), (geo.x0, geo.y1)))
    draw_thin = p >= 2.5  # finer than that, 1 mm lines blend into a tint, as in a downscaled scan
    if not draw_thin:
        tint = tuple(int(0.7 * a + 0.3 * b) for a, b in zip(paper, thin))
        draw.polygon(geo.place(corners), fill=tint)
    thick_width = max(1, int(round(p / 4)))
    for origin, lo, hi, vertical in ((geo.x0, geo.x0, geo.x1, True), (geo.y0, geo.y0, geo.y1, False)):
        offset_mm = rng.uniform(0, 5)
        positions = origin + (offset_mm - 5 + np.arange(int((hi - lo) / p) + 10)) * p
        for index, pos in enumerate(positions):
            if not lo <= pos <= hi:
                continue
            is_thick = index % 5 == 0
            if not (is_thick or draw_thin):
                continue
            ends = ((pos, geo.y0), (pos, geo.y1)) if vertical else ((geo.x0, pos), (geo.x1, pos))
            draw.line(geo.place(np.array(ends)), fill=thick if is_thick else thin, width=thick_width if is_thick else 1)


def _draw_traces(draw, geo: _Geometry, leads: dict, ink, line_width: int) -> None:
    """Calibration pulses, the 3 x 4 lead segments, the rhythm strip and lead labels."""
    p = geo.px_per_mm
    row_height = (geo.y1 - geo.y0) / (len(LEAD_ROWS) + 1)
    x_start = geo.x0 + LEAD_IN_MM * p
    px_per_sample = PAPER_SPEED_MM_S * p / SAMPLE_RATE_HZ
    samples_per_segment = int(SEGMENT_SECONDS * SAMPLE_RATE_HZ)
    y_limits = (geo.y0 + line_width, geo.y1 - line_width)
    font = _font(int(round(3.5 * p)))
    mv = GAIN_MM_PER_MV * p
    rows = [(lead_row, samples_per_segment) for lead_row in LEAD_ROWS] + [((RHYTHM_LEAD,), len(leads[RHYTHM_LEAD]))]
    for row_index, (row_leads, n_samples) in enumerate(rows):
        baseline = geo.y0 + (row_index + 0.5) * row_height
        pulse = np.array(((0, 0), (1, 0), (1, -1), (4, -1), (4, 0), (LEAD_IN_MM, 0)), float)
        pulse[:, 0] = geo.x0 + pulse[:, 0] * p
        pulse[:, 1] = baseline + pulse[:, 1] * mv
        draw.line(geo.place(pulse), fill=ink, width=line_width, joint="curve")
        for column, lead in enumerate(row_leads):
            first = column * samples_per_segment
            signal = leads[lead][first:first + n_samples]
            x = x_start + (first + np.arange(len(signal))) * px_per_sample
            y = np.clip(baseline - signal * mv, *y_limits)
            draw.line(geo.place(np.column_stack((x, y))), fill=ink, width=line_width, joint="curve")
            label_at = geo.place(np.array(((x[0] + p, baseline - 0.42 * row_height),)))
            draw.text(tuple(label_at), lead, font=font, fill=ink)
            if column:
                tick = np.array(((x[0], baseline - 3 * p), (x[0], baseline + 3 * p)))
                draw.line(geo.place(tick), fill=ink, width=line_width)


def _draw_text_bands(draw, page_size, rng: np.random.Generator, ink, *, patient_id: str, date: str, rate: int) -> None:
    """Header (title, id, sex, age, settings) above and footer (date, HR, device) below the crop box."""
    width, height = page_size
    x = width * rng.uniform(0.035, 0.05)
    header = (
        (0.025, 0.032, f"{rng.choice(_HOSPITALS)}    12-lead ECG"),
        (0.070, 0.026, f"ID: {patient_id}    Sex: {rng.choice(['M', 'F'])}    Age: {rng.integers(25, 86)}"),
        (0.112, 0.024, f"Speed: {PAPER_SPEED_MM_S:g} mm/s    Gain: {GAIN_MM_PER_MV:g} mm/mV    Filter: 0.05-100 Hz"),
    )
    for y_fraction, size_fraction, text in header:
        draw.text((x, y_fraction * height), text, font=_font(int(size_fraction * height)), fill=ink)
    footer = f"{date}    HR: {rate} bpm    Device: {rng.choice(_DEVICES)}"
    draw.text((x, 0.971 * height), footer, font=_font(int(0.019 * height)), fill=ink)


def render_page(
    class_code: str,
    rng: np.random.Generator,
    page_size=REFERENCE_PAGE_SIZE,
    *,
    patient_id: str,
    date: str,
    leads: dict | None = None,
    heart_rate: int | None = None,
) -> Image.Image:
    """Draw one 12-lead ECG report page (RGB) of class ``class_code``.

    Layout as in docs/design_notes.md ("Page geometry"): 3 x 4 lead segments of 2.5 s and
    a 10 s lead II strip on a pink millimetre grid, 25 mm/s, 10 mm/mV, all
    inside ``HEADER_CROP_FRACTIONS``; the header (``patient_id``, sex, age)
    and footer (``date`` verbatim, heart rate, device) lie outside it. The
    same ``rng`` state gives the same pixels.

    ``leads`` (the twelve leads in mV, 10 s at ``SAMPLE_RATE_HZ``, e.g. from a real
    recording) and ``heart_rate`` are drawn instead of simulated ones; ``class_code``
    is then not used.
    """
    width, height = (int(v) for v in page_size)
    if leads is None:
        if class_code not in CLASS_CODES:
            raise ValueError(f"unknown class code {class_code!r}; expected one of {CLASS_CODES}")
        leads, qrs = simulate_leads(class_code, rng)
        rate = int(round(60 / np.diff(qrs).mean()))
    else:
        missing = sorted(set(LEAD_NAMES) - set(leads))
        if missing or heart_rate is None:
            raise ValueError(f"leads must hold all twelve leads (missing {missing}) and heart_rate a number")
        rate = int(heart_rate)

    brightness = rng.uniform(0.9, 1.0)
    paper = _shade((255, 255 - rng.integers(0, 6), 255 - rng.integers(0, 10)), brightness)
    ink = (int(rng.integers(0, 50)),) * 3
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    px_per_mm_nominal = width / PAGE_WIDTH_MM
    line_width = max(1, int(round(px_per_mm_nominal * rng.uniform(0.22, 0.42))))
    geo = _geometry((width, height), rng, line_width)
    _draw_grid(draw, geo, rng, paper, brightness)
    _draw_traces(draw, geo, leads, ink, line_width)
    _draw_text_bands(draw, (width, height), rng, ink, patient_id=patient_id, date=date, rate=rate)
    return image
