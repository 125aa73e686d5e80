"""The synthetic twin: an offline stand-in for the Kaggle archive.

The real data (Kaggle ``evilspirit05/ecg-analysis``, paper section 3.1) cannot
be downloaded on the development and CI machines, so this module draws 12-lead
ECG report pages of the four classes and writes them in the real archive's
tree shape, with the real archive's defects planted on purpose
(docs/design_notes.md, "The real dataset"): a regular pattern of exact copies, copies
shared by the train and test folders, re-encoded near copies, stray files and
an unreadable image. A marker file ``SYNTHETIC_TWIN.json`` records every
planted defect, so the audit can be tested against known answers and no number
computed on the twin can pass for the paper's.

Pages are drawn from a cardiac-dipole model: each wave of a beat (P, q, R, S,
T, ST injury current) is a Gaussian in time with a direction in the body; a
lead records the projection of that dipole on its lead vector. The class lives
in the waveforms only: header, footer, colours and layout are drawn the same
way for every class.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ecgpaper import __version__
from ecgpaper.config import (
    CLASS_CODES,
    FILE_PREFIXES,
    HEADER_CROP_FRACTIONS,
    KAGGLE_CLASS_FOLDERS,
    PAGE_WIDTH_MM,
    REFERENCE_PAGE_SIZE,
)

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC_TWIN.json"
DATA_DIR = "ECG_DATA"
SPLIT_FOLDERS = ("train", "test")

# --------------------------------------------------------------------------
# Recording and paper (docs/design_notes.md, "Page geometry")
# --------------------------------------------------------------------------
SAMPLE_RATE_HZ = 500.0
RECORD_SECONDS = 10.0
SEGMENT_SECONDS = 2.5
PAPER_SPEED_MM_S = 25.0
GAIN_MM_PER_MV = 10.0
LEAD_IN_MM = 5.0  # left of the traces: the 1 mV calibration pulse
MAX_ROTATION_DEG = 1.0
MAX_SCALE_DEVIATION = 0.02

#: Rows of the report: 3 x 4 lead segments of 2.5 s, then a 10 s lead II strip.
LEAD_ROWS = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"

# Lead vectors in a body frame: x to the patient's left, y inferior, z anterior.
# I and II are measured; III, aVR, aVL, aVF are derived from them as an ECG
# machine does, so Einthoven's law holds for signal and noise alike.
_MEASURED_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_PRECORDIAL_ANGLE_DEG = {"V1": 115, "V2": 95, "V3": 72, "V4": 48, "V5": 20, "V6": 0}
_PRECORDIAL_GAIN = {"V1": 1.1, "V2": 1.5, "V3": 1.5, "V4": 1.4, "V5": 1.2, "V6": 1.0}
_DERIVED_LEADS = {  # lead: (weight of I, weight of II)
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}


def _measured_lead_vectors() -> np.ndarray:
    rows = [(1.0, 0.0, 0.0), (0.5, np.sqrt(3) / 2, 0.0)]
    for lead, angle in _PRECORDIAL_ANGLE_DEG.items():
        a = np.radians(angle)
        rows.append(tuple(_PRECORDIAL_GAIN[lead] * np.array((np.cos(a), 0.0, np.sin(a)))))
    return np.array(rows)


_LEAD_VECTORS = _measured_lead_vectors()
_ALL_LEAD_VECTORS = np.vstack(
    [_LEAD_VECTORS] + [w1 * _LEAD_VECTORS[0] + w2 * _LEAD_VECTORS[1] for w1, w2 in _DERIVED_LEADS.values()]
)

#: Directions pointing at the infarcted wall: leads facing it show the injury
#: (ST elevation, Q waves), leads opposite it the reciprocal change.
_TERRITORIES = {
    "anterior": (0.2, -0.35, 0.9),  # V1-V4, reciprocal II/III/aVF
    "inferior": (-0.2, 0.95, -0.2),  # II/III/aVF, reciprocal I/aVL
    "lateral": (0.9, -0.35, -0.1),  # I/aVL/V5/V6, reciprocal III/aVF/V1
}

_HOSPITALS = ("Cardiac Care Unit", "Heart Institute", "City Hospital ECG Lab", "Department of Cardiology")
_DEVICES = ("CardioTrace 12", "PulseScribe 1200", "VectorLine E12", "HeartPrint 600")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------
# Physiology: beats, dipole waves, 12 leads
# --------------------------------------------------------------------------
@dataclass
class _Waves:
    """Gaussian dipole components: centre (s), width (s), amplitude (mV), direction;
    and the R times of the beats conducted through the normal pathway."""

    centres: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    amplitudes: list = field(default_factory=list)
    directions: list = field(default_factory=list)
    conducted: list = field(default_factory=list)

    def add(self, centre: float, width: float, amplitude: float, direction) -> None:
        self.centres.append(centre)
        self.widths.append(width)
        self.amplitudes.append(amplitude)
        self.directions.append(direction)

    def dipole(self, t: np.ndarray) -> np.ndarray:
        """The summed dipole on the uniform time grid ``t``, shape (3, len(t)).

        Each Gaussian is evaluated within 5 widths of its centre only."""
        total = np.zeros((3, len(t)))
        step = t[1] - t[0]
        for centre, width, amplitude, direction in zip(self.centres, self.widths, self.amplitudes, self.directions):
            lo = max(0, int((centre - 5 * width - t[0]) / step))
            hi = min(len(t), int((centre + 5 * width - t[0]) / step) + 2)
            if lo < hi:
                shape = np.exp(-0.5 * ((t[lo:hi] - centre) / width) ** 2)
                total[:, lo:hi] += amplitude * np.asarray(direction)[:, None] * shape
        return total


def _lead_scale(direction) -> float:
    """Largest deflection (mV) a unit dipole along ``direction`` makes in any lead."""
    return float(np.abs(_ALL_LEAD_VECTORS @ direction).max())


def _patient(rng: np.random.Generator) -> dict:
    """Normal sinus-beat morphology of one patient (axis, amplitudes, intervals)."""
    axis = np.radians(rng.uniform(-10, 75))
    r_dir = _unit((np.cos(axis), np.sin(axis), rng.uniform(-0.15, 0.25)))
    return {
        "pr": rng.uniform(0.13, 0.20),
        "p": (rng.uniform(0.020, 0.028), rng.uniform(0.10, 0.20), _unit((0.55, 0.8, rng.uniform(0.0, 0.3)))),
        "q": (0.008, rng.uniform(0.08, 0.18), _unit((-0.7, 0.1, 0.7))),
        "r": (rng.uniform(0.009, 0.012), rng.uniform(1.0, 1.5), r_dir),
        "s": (rng.uniform(0.009, 0.012), rng.uniform(0.45, 0.8), _unit((-0.25, -0.35, -0.9))),
        "t": (rng.uniform(0.038, 0.05), rng.uniform(0.22, 0.38), _unit(r_dir + np.array((0.0, 0.0, 0.6)))),
        "t_offset": rng.uniform(0.27, 0.31),  # at RR = 1 s; scales with sqrt(RR)
        "st": None,  # (amplitude, direction) of an injury current
        "q_path": None,  # (width, amplitude, direction) of a pathological Q
    }


def _apply_acute_mi(patient: dict, rng: np.random.Generator) -> None:
    """ST elevation of 0.1-0.4 mV facing one territory, reciprocal depression, hyperacute T."""
    territory = str(rng.choice(list(_TERRITORIES)))
    u = _unit(_TERRITORIES[territory])
    st_mv = rng.uniform(0.1, 0.4)
    patient["st"] = (st_mv / _lead_scale(u), u)
    width, amp, t_dir = patient["t"]
    hyperacute = amp * t_dir + rng.uniform(0.25, 0.5) / _lead_scale(u) * u
    patient["t"] = (width * 1.2, float(np.linalg.norm(hyperacute)), _unit(hyperacute))


def _apply_old_mi(patient: dict, rng: np.random.Generator) -> None:
    """Wide deep Q waves, lost R and inverted T facing one territory; ST isoelectric."""
    territory = str(rng.choice(list(_TERRITORIES)))
    u = _unit(_TERRITORIES[territory])
    patient["q_path"] = (rng.uniform(0.012, 0.016), rng.uniform(0.3, 0.6) / _lead_scale(u), -u)
    width, amp, r_dir = patient["r"]
    r_vec = amp * r_dir - 0.5 * max(float(amp * r_dir @ u), 0.0) * u
    patient["r"] = (width, float(np.linalg.norm(r_vec)), _unit(r_vec))
    width, amp, t_dir = patient["t"]
    inverted = amp * t_dir - rng.uniform(0.45, 0.75) / _lead_scale(u) * u
    patient["t"] = (width, float(np.linalg.norm(inverted)), _unit(inverted))


def _sinus_times(rng: np.random.Generator, rr: float, start: float, stop: float) -> np.ndarray:
    """Beat times of a sinus rhythm with respiratory variation."""
    period, phase = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi)
    times, t = [], start + rng.uniform(0, rr)
    while t < stop:
        times.append(t)
        t += rr * (1 + 0.04 * np.sin(2 * np.pi * t / period + phase) + rng.normal(0, 0.01))
    return np.array(times)


def _add_sinus_beat(waves: _Waves, patient: dict, t: float, rr: float, pr: float | None) -> None:
    waves.conducted.append(t)
    if pr is not None:
        waves.add(t - pr, *patient["p"])
    waves.add(t - 0.028, *patient["q"])
    if patient["q_path"] is not None:
        waves.add(t - 0.018, *patient["q_path"])
    waves.add(t, *patient["r"])
    waves.add(t + 0.026, *patient["s"])
    waves.add(t + patient["t_offset"] * np.sqrt(rr), *patient["t"])


def _add_pvc(waves: _Waves, rng: np.random.Generator, t: float) -> None:
    """A premature ventricular beat: wide bizarre QRS, discordant T, no P."""
    main = _unit(rng.normal(size=3))
    width = rng.uniform(0.022, 0.032)
    waves.add(t, width, rng.uniform(1.0, 1.8), main)
    waves.add(t + 0.05, width, rng.uniform(0.3, 0.6), _unit(-main + 0.5 * rng.normal(size=3)))
    waves.add(t + 0.30, 0.06, rng.uniform(0.25, 0.45), -main)


def _heart_beats(class_code: str, rng: np.random.Generator, patient: dict):
    """Waves of every beat from -1.5 s to 11 s, the QRS times and any fibrillatory wave.

    NORM, MI, HMI: sinus rhythm, 55-100 bpm. HB: atrial fibrillation
    (irregular RR, no P, fibrillatory baseline), premature ventricular beats,
    or Wenckebach block (lengthening PR, dropped QRS).
    """
    start, stop = -1.5, RECORD_SECONDS + 1.0
    waves = _Waves()
    fibrillation = None
    rhythm = str(rng.choice(["af", "pvc", "wenckebach"], p=[0.4, 0.4, 0.2])) if class_code == "HB" else "sinus"
    if rhythm == "af":
        rr_mean, irregularity = 60 / rng.uniform(70, 130), rng.uniform(0.15, 0.3)
        qrs, t = [], start + rng.uniform(0, rr_mean)
        while t < stop:
            qrs.append(t)
            t += float(np.clip(rr_mean * np.exp(rng.normal(0, irregularity)), 0.3, 2.0))
        for t in qrs:
            _add_sinus_beat(waves, patient, t, rr_mean, pr=None)
        fibrillation = (rng.uniform(4, 8, size=4), rng.uniform(0, 2 * np.pi, size=4), rng.uniform(0.03, 0.07))
    elif rhythm == "wenckebach":
        pp, group = 60 / rng.uniform(60, 100), int(rng.integers(3, 6))
        p_times = _sinus_times(rng, pp, start, stop)
        qrs = []
        for i, p_time in enumerate(p_times):
            position = i % group
            if position == group - 1:  # blocked P wave
                waves.add(p_time, *patient["p"])
                continue
            pr = patient["pr"] + 0.08 * position
            qrs.append(p_time + pr)
            _add_sinus_beat(waves, patient, p_time + pr, pp, pr)
    else:
        rr = 60 / rng.uniform(55, 100)
        qrs = list(_sinus_times(rng, rr, start, stop))
        premature = np.zeros(len(qrs), bool)
        if rhythm == "pvc":
            premature = rng.random(len(qrs)) < rng.uniform(0.1, 0.3)
            premature[1:] &= ~premature[:-1]  # no couplets
            visible = np.flatnonzero((np.array(qrs) > 1.0) & (np.array(qrs) < RECORD_SECONDS - 1.0))
            forced = rng.choice(visible)  # at least one on the page
            premature[[forced - 1, forced, forced + 1]] = (False, True, False)
            premature[0] = False
        for i, t in enumerate(qrs):
            if premature[i]:
                qrs[i] = qrs[i - 1] + rng.uniform(0.55, 0.7) * (t - qrs[i - 1])
                _add_pvc(waves, rng, qrs[i])
            else:
                _add_sinus_beat(waves, patient, t, rr, patient["pr"])
    return waves, np.array(qrs), fibrillation


def _simulate_leads(class_code: str, rng: np.random.Generator):
    """Twelve 10 s leads (mV, sampled at SAMPLE_RATE_HZ) and the QRS times (s) of the record."""
    patient = _patient(rng)
    if class_code == "MI":
        _apply_acute_mi(patient, rng)
    elif class_code == "HMI":
        _apply_old_mi(patient, rng)
    waves, qrs, fibrillation = _heart_beats(class_code, rng, patient)
    t = np.arange(int(RECORD_SECONDS * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ

    dipole = rng.uniform(0.75, 1.3) * waves.dipole(t)
    if patient["st"] is not None:  # injury current from the J point to the T peak of each beat
        amp, direction = patient["st"]
        plateau = np.zeros_like(t)
        for r in waves.conducted:
            end = r + 0.9 * patient["t_offset"]  # near the T peak (at RR = 1 s)
            plateau += _sigmoid((t - r - 0.04) / 0.006) * _sigmoid((end - t) / 0.04)
        dipole += amp * direction[:, None] * plateau
    if fibrillation is not None:
        freqs, phases, amp = fibrillation
        f_wave = amp * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(0) / 2
        dipole += _unit((-0.3, 0.6, 0.7))[:, None] * f_wave

    measured = _LEAD_VECTORS @ dipole
    n = len(_MEASURED_LEADS)
    wander_freq, wander_phase = rng.uniform(0.05, 0.4, size=(n, 1)), rng.uniform(0, 2 * np.pi, size=(n, 1))
    measured += rng.uniform(0, 0.15, size=(n, 1)) * np.sin(2 * np.pi * wander_freq * t + wander_phase)
    noise = rng.normal(0, rng.uniform(0.01, 0.04), size=measured.shape)
    kernel = np.ones(4) / 4  # the recorder's low-pass filter
    measured += np.array([np.convolve(row, kernel, mode="same") for row in noise])

    leads = dict(zip(_MEASURED_LEADS, measured))
    for lead, (w1, w2) in _DERIVED_LEADS.items():
        leads[lead] = w1 * leads["I"] + w2 * leads["II"]
    return leads, qrs[(qrs >= 0) & (qrs < RECORD_SECONDS)]


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------
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
) -> Image.Image:
    """Draw one 12-lead ECG report page (RGB) of class ``class_code``.

    Layout as in docs/design_notes.md ("Page geometry"): 3 x 4 lead segments of 2.5 s and
    a 10 s lead II strip on a pink millimetre grid, 25 mm/s, 10 mm/mV, all
    inside ``HEADER_CROP_FRACTIONS``; the header (``patient_id``, sex, age)
    and footer (``date`` verbatim, heart rate, device) lie outside it. The
    same ``rng`` state gives the same pixels.
    """
    if class_code not in CLASS_CODES:
        raise ValueError(f"unknown class code {class_code!r}; expected one of {CLASS_CODES}")
    width, height = (int(v) for v in page_size)
    leads, qrs = _simulate_leads(class_code, rng)
    rate = int(round(60 / np.diff(qrs).mean()))

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


# --------------------------------------------------------------------------
# The archive tree (docs/design_notes.md, "The real dataset")
# --------------------------------------------------------------------------
_PLAN_STREAM = 1_000  # SeedSequence key of the tree plan; class indices are 0-3
CORRUPT_KEEP_FRACTION = 0.4  # a corrupt file keeps the first 40 % of a JPEG

_STRAY_BYTES = {
    "desktop.ini": b"[.ShellClassInfo]\r\nIconResource=C:\\Windows\\System32\\imageres.dll,-3\r\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(2038),
    "appledouble": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4072),
    "zone": b"[ZoneTransfer]\r\nZoneId=3\r\n",
}


@dataclass(frozen=True)
class _BaseTask:
    """One distinct page and the files it is written to.

    ``files`` holds (relative path, quality shift): shift 0 writes the page's
    own JPEG bytes, any other shift re-encodes it at that many quality steps
    away (a near duplicate whose sha256 differs).
    """

    root: str
    seed: int
    class_index: int
    base_index: int
    page_size: tuple
    files: tuple


def _image_relpath(split: str, class_code: str, number: int) -> str:
    return f"{DATA_DIR}/{split}/{KAGGLE_CLASS_FOLDERS[class_code]}/{FILE_PREFIXES[class_code]}({number}).jpg"


def _natural_key(text: str) -> list:
    """Sort ``MI(2).jpg`` before ``MI(10).jpg``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _base_rng(seed: int, class_index: int, base_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, base_index]))


def _random_date(rng: np.random.Generator) -> str:
    moment = dt.datetime(2017, 1, 1) + dt.timedelta(minutes=int(rng.integers(0, 5 * 365 * 24 * 60)))
    return moment.strftime("%Y-%m-%d %H:%M")


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


def _write_base(task: _BaseTask) -> list[tuple[str, str]]:
    """Render one base page, write its files; return (relative path, sha256) per file."""
    rng = _base_rng(task.seed, task.class_index, task.base_index)
    quality = int(rng.integers(75, 96))
    patient_id = f"{rng.integers(10_000):04d}-{rng.integers(10_000):04d}"
    date = _random_date(rng)
    image = render_page(CLASS_CODES[task.class_index], rng, task.page_size, patient_id=patient_id, date=date)
    encoded: dict[int, tuple[bytes, str]] = {}
    written = []
    for relpath, shift in task.files:
        if shift not in encoded:
            shifted = quality + shift if quality + shift <= 98 else quality - shift
            data = _jpeg_bytes(image, shifted)
            encoded[shift] = (data, hashlib.sha256(data).hexdigest())
        data, digest = encoded[shift]
        Path(task.root, relpath).write_bytes(data)
        written.append((relpath, digest))
    return written


def _normalised_parameters(distinct_per_class, page_size, seed, duplicate_fraction, near_duplicate_fraction,
                           test_fraction, cross_split_fraction, plant_strays, n_corrupt) -> dict:
    """Validate the parameters; return them as they are stored in the marker."""
    if isinstance(distinct_per_class, dict):
        if set(distinct_per_class) != set(CLASS_CODES):
            raise ValueError(f"distinct_per_class must give a count for each of {CLASS_CODES}")
        distinct = {code: int(distinct_per_class[code]) for code in CLASS_CODES}
    else:
        distinct = {code: int(distinct_per_class) for code in CLASS_CODES}
    if min(distinct.values()) < 2:
        raise ValueError("distinct_per_class must be at least 2 (one test and one train base page)")
    width, height = (int(v) for v in page_size)
    if min(width, height) < 64:
        raise ValueError(f"page_size {page_size} is too small; use at least 64 x 64")
    for name, value, upper in (("duplicate_fraction", duplicate_fraction, 0.95),
                               ("near_duplicate_fraction", near_duplicate_fraction, 1.0),
                               ("test_fraction", test_fraction, 0.95),
                               ("cross_split_fraction", cross_split_fraction, 1.0)):
        if not 0 <= value <= upper:
            raise ValueError(f"{name} must lie in [0, {upper}], got {value}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if n_corrupt < 0:
        raise ValueError(f"n_corrupt must be >= 0, got {n_corrupt}")
    return {
        "seed": int(seed),
        "page_size": [width, height],
        "distinct_per_class": distinct,
        "duplicate_fraction": float(duplicate_fraction),
        "near_duplicate_fraction": float(near_duplicate_fraction),
        "test_fraction": float(test_fraction),
        "cross_split_fraction": float(cross_split_fraction),
        "plant_strays": bool(plant_strays),
        "n_corrupt": int(n_corrupt),
    }


def _plan(root: Path, params: dict) -> tuple[list[_BaseTask], int]:
    """Which base page goes to which files, following the real archive's pattern.

    Per class the base pages are split into test-folder and train-folder bases;
    in each folder file ``k`` shows base ``(k - 1) mod n_bases`` and there are
    about ``n_bases / (1 - duplicate_fraction)`` files, so ``MI(k)`` equals
    ``MI(k + n_bases)``. A ``cross_split_fraction`` of the test bases gets one
    more copy at the end of the train numbering. Returns the tasks and the
    number of cross-split groups.
    """
    rng = np.random.default_rng(np.random.SeedSequence([params["seed"], _PLAN_STREAM]))
    files: dict[tuple[int, int], list[str]] = {}
    n_cross_total = 0
    for class_index, code in enumerate(CLASS_CODES):
        n = params["distinct_per_class"][code]
        n_test = min(n - 1, max(1, round(n * params["test_fraction"])))
        bases = {"test": list(range(n_test)), "train": list(range(n_test, n))}
        n_files = {}
        for split in SPLIT_FOLDERS:
            split_bases = bases[split]
            n_files[split] = max(len(split_bases), round(len(split_bases) / (1 - params["duplicate_fraction"])))
            for number in range(1, n_files[split] + 1):
                base = split_bases[(number - 1) % len(split_bases)]
                files.setdefault((class_index, base), []).append(_image_relpath(split, code, number))
        n_cross = round(params["cross_split_fraction"] * n_test)
        for offset, base in enumerate(sorted(rng.choice(bases["test"], n_cross, replace=False))):
            files[(class_index, int(base))].append(_image_relpath("train", code, n_files["train"] + 1 + offset))
        n_cross_total += n_cross

    copies = [(key, position) for key, paths in files.items() for position in range(1, len(paths))]
    fraction = params["near_duplicate_fraction"]
    n_near = max(1, round(fraction * len(copies))) if fraction > 0 and copies else 0
    shifts = {}
    for choice in rng.choice(len(copies), n_near, replace=False):
        shifts[copies[choice]] = int(rng.choice([-1, 1]) * rng.integers(5, 16))
    tasks = [
        _BaseTask(str(root), params["seed"], class_index, base, tuple(params["page_size"]),
                  tuple((path, shifts.get(((class_index, base), position), 0)) for position, path in enumerate(paths)))
        for (class_index, base), paths in sorted(files.items())
    ]
    return tasks, n_cross_total


def _run_tasks(tasks: list[_BaseTask], workers: int, progress: bool) -> dict[str, str]:
    """Render and write every base page, in ``workers`` processes; {relative path: sha256}."""
    digests: dict[str, str] = {}
    bar = tqdm(total=len(tasks), desc="synthetic twin", unit="page", disable=not progress)
    with bar:
        if workers == 1:
            for task in tasks:
                digests.update(_write_base(task))
                bar.update()
        else:
            # a fork server, not fork: safe even when the caller already runs TensorFlow threads
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                try:
                    for future in cf.as_completed([pool.submit(_write_base, task) for task in tasks]):
                        digests.update(future.result())
                        bar.update()
                except cf.process.BrokenProcessPool as error:
                    raise RuntimeError(
                        "a synthetic-twin worker process died; a script that calls synthesize() with "
                        "workers > 1 must do so under `if __name__ == '__main__':` (workers re-import "
                        "the script), or pass workers=1"
                    ) from error
    return digests


def _plant_strays(root: Path) -> list[str]:
    """The junk real archives carry: desktop.ini, .DS_Store, AppleDouble, Zone.Identifier."""
    mi_folder = KAGGLE_CLASS_FOLDERS["MI"]
    first_mi = f"{FILE_PREFIXES['MI']}(1).jpg"
    strays = {
        f"{DATA_DIR}/train/desktop.ini": _STRAY_BYTES["desktop.ini"],
        f"{DATA_DIR}/train/{mi_folder}/.DS_Store": _STRAY_BYTES[".DS_Store"],
        f"__MACOSX/{DATA_DIR}/test/{mi_folder}/._{first_mi}": _STRAY_BYTES["appledouble"],
        f"{DATA_DIR}/train/{mi_folder}/{first_mi}:Zone.Identifier": _STRAY_BYTES["zone"],
    }
    for relpath, data in strays.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(strays, key=_natural_key)


def _plant_corrupt(root: Path, n_corrupt: int, counts: dict) -> list[str]:
    """Truncated JPEGs named like the next image of a train folder, classes in turn."""
    corrupt = []
    for i in range(n_corrupt):
        code = CLASS_CODES[i % len(CLASS_CODES)]
        counts["train"][code] += 1
        relpath = _image_relpath("train", code, counts["train"][code])
        valid = (root / _image_relpath("train", code, 1)).read_bytes()
        (root / relpath).write_bytes(valid[: int(len(valid) * CORRUPT_KEEP_FRACTION)])
        corrupt.append(relpath)
    return corrupt


def _groups(members: dict) -> list[list[str]]:
    """The member lists of two or more paths, each and all in natural order."""
    groups = [sorted(paths, key=_natural_key) for paths in members.values() if len(paths) >= 2]
    return sorted(groups, key=lambda group: _natural_key(group[0]))


def synthesize(
    root,
    *,
    distinct_per_class=60,
    page_size=REFERENCE_PAGE_SIZE,
    seed=0,
    duplicate_fraction=0.47,
    near_duplicate_fraction=0.05,
    test_fraction=0.235,
    cross_split_fraction=0.10,
    plant_strays=True,
    n_corrupt=1,
    workers=None,
    progress=True,
) -> dict:
    """Write the synthetic twin of the Kaggle archive under ``root``; return its marker.

    Tree: ``root/ECG_DATA/{train,test}/<KAGGLE_CLASS_FOLDERS[c]>/<FILE_PREFIXES[c]>(k).jpg``
    with the real archive's defects planted (docs/design_notes.md, "The real
    dataset"): exact copies in a regular pattern (about ``duplicate_fraction``
    of all files), copies shared by test and train (``cross_split_fraction``
    of the test pages), re-encoded near copies (``near_duplicate_fraction`` of
    the copies, at least one), stray files and ``n_corrupt`` truncated JPEGs.
    Every planted defect is listed in ``root/SYNTHETIC_TWIN.json``; its
    ``counts`` are the image-named files per folder and class, corrupt ones
    included.

    Each base page draws from ``SeedSequence([seed, class_index, base_index])``,
    so the same seed gives the same bytes whatever ``workers`` is. A root that
    already holds a twin with the same parameters is left as it is; any other
    non-empty root is refused.
    """
    root = Path(root)
    params = _normalised_parameters(distinct_per_class, page_size, seed, duplicate_fraction,
                                    near_duplicate_fraction, test_fraction, cross_split_fraction,
                                    plant_strays, n_corrupt)
    marker_path = root / MARKER_FILE
    if marker_path.is_file():
        marker = json.loads(marker_path.read_text())
        stored = {key: marker.get(key) for key in params}
        if stored == params:
            log.info("synthetic twin already present in %s; nothing to do", root)
            return marker
        differing = sorted(key for key in params if stored[key] != params[key])
        raise ValueError(
            f"{root} holds a synthetic twin made with other parameters ({', '.join(differing)}); "
            "delete that folder or pick another root"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            f"{root} is not empty and holds no {MARKER_FILE}; the twin is only written into an empty "
            "or new folder (an interrupted run leaves no marker: delete the folder and run again)"
        )
    workers = int(workers or os.cpu_count() or 1)

    tasks, n_cross = _plan(root, params)
    for split in SPLIT_FOLDERS:
        for code in CLASS_CODES:
            (root / DATA_DIR / split / KAGGLE_CLASS_FOLDERS[code]).mkdir(parents=True, exist_ok=True)
    digests = _run_tasks(tasks, workers, progress)

    counts = {split: {code: 0 for code in CLASS_CODES} for split in SPLIT_FOLDERS}
    for relpath in digests:
        split, folder = relpath.split("/")[1:3]
        counts[split][next(c for c in CLASS_CODES if KAGGLE_CLASS_FOLDERS[c] == folder)] += 1
    by_digest: dict[str, list[str]] = {}
    for relpath, digest in digests.items():
        by_digest.setdefault(digest, []).append(relpath)
    strays = _plant_strays(root) if plant_strays else []
    corrupt = _plant_corrupt(root, params["n_corrupt"], counts)

    marker = {
        "dataset": "synthetic",
        "generator": __name__,
        "version": __version__,
        **params,
        "counts": counts,
        "distinct": dict(params["distinct_per_class"]),
        "exact_duplicate_groups": _groups(by_digest),
        "near_duplicate_groups": _groups({(t.class_index, t.base_index): [p for p, _ in t.files] for t in tasks}),
        "cross_split_groups": n_cross,
        "corrupt": corrupt,
        "strays": strays,
    }
    text = json.dumps(marker, sort_keys=True, indent=2) + "\n"
    temporary = marker_path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, marker_path)
    return json.loads(text)


def is_synthetic(root) -> bool:
    """True if ``root`` or one of its four parents holds the twin's marker file.

    Four levels reach the twin's root from an image file
    (``<root>/ECG_DATA/<split>/<class folder>/<file>``).
    """
    path = Path(root).resolve()
    return any((candidate / MARKER_FILE).is_file() for candidate in [path, *path.parents][:5])
