"""Is an upload a 12-lead ECG report page? The out-of-distribution gate that
runs before classification (issue 22, item 9: a blank page, a photo, a letter
or a chest X-ray must not get a cardiac class).

Six numbers describe what every ECG report page has (:func:`page_features`,
on the page decoded and resized to 512 x 512 with the preprocessing's own
code): light paper (median luminance, the share of near-white and of mid-tone
pixels), thin dark traces (the share of dark pixels, on a log scale) and a
millimetre grid (how periodic the page's column and row profiles are, in both
directions). Colour is not used: a greyscale scan of an ECG is still an ECG.

:func:`fit_gate` calibrates it: the centre, scale and (Ledoit-Wolf) covariance
of the training pages' features, and a threshold on the Mahalanobis distance
from the validation pages' distances (:data:`THRESHOLD_QUANTILE`, times
:data:`THRESHOLD_MARGIN`). The export writes the result next to the model
(``ecgpaper.runs.export``), so the served model and its gate always come from
the same data; :class:`PageGate` is what the service checks uploads with.
benchmarks/bench_ood.py measures it against non-ECG images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ecgpaper.data.preprocess import PreprocessSettings, decode_reduced, finish_image
from ecgpaper.errors import UserError

GATE_VERSION = 1
#: the resolution the gate looks at: the 5 mm grid is ~9 px apart on a full page
GATE_SETTINGS = PreprocessSettings(size=512, fit="resize", crop=False)
FEATURES = ("paper_brightness", "paper_fraction", "midtone_fraction", "log_ink_fraction",
            "log_grid_vertical", "log_grid_horizontal")
#: a floor under each feature's scale, so a very uniform training set (the twin)
#: does not make the gate refuse every page that differs in the third decimal
MIN_SCALE = (0.02, 0.03, 0.03, 0.1, 0.05, 0.05)
#: the threshold: this quantile of the validation pages' distances, times the margin
THRESHOLD_QUANTILE = 0.99
THRESHOLD_MARGIN = 1.5
#: what the model card says the gate turns away
REJECTS = ("blank or near-blank pages, photos, letters and other text documents, noise and other "
           "medical images (e.g. an MRI slice): anything without an ECG page's light paper, "
           "millimetre grid and thin dark traces")
_LUMA = np.array((0.299, 0.587, 0.114), np.float32) / 255
_STRIPS = 32
_MAX_SHIFT = 2  # px between neighbouring strips of 16 rows
_PERIODS = (4, 48)  # px at 512: the 5 mm grid of a page that fills 1/6 to all of the image


def page_pixels(img: Image.Image) -> np.ndarray:
    """An opened (not yet loaded) image -> the (512, 512, 3) uint8 page the gate reads."""
    return finish_image(decode_reduced(img, GATE_SETTINGS), GATE_SETTINGS)


def _periodicity(profiles: np.ndarray) -> float:
    """How strongly neighbouring strips' profiles (strips x positions) repeat with
    one common period: their mean cross-correlation at 1-3 periods minus that half a
    period later, for the best period. Grid lines run through every strip at the same
    places (high); text and noise change from strip to strip, photos do not repeat (~0)."""
    k = 3  # high-pass: thin lines stay, shading and vignetting go
    kernel = np.ones(2 * k + 1) / (2 * k + 1)
    p = np.stack([row - np.convolve(row, kernel, "same") for row in profiles])[:, 12:-12]
    n = p.shape[1]
    spectrum = np.fft.rfft(p, 2 * n, axis=1)
    cross = np.fft.irfft(spectrum[:-1] * np.conj(spectrum[1:]), axis=1)
    energy = np.sqrt((p[:-1] ** 2).sum(1) * (p[1:] ** 2).sum(1))[:, None]
    cross = np.where(energy > 1e-9, cross / np.maximum(energy, 1e-9), 0.0).mean(0)
    # a tilted page (up to ~7 degrees) shifts the lines by a pixel or two from strip to strip
    shift = max(range(-_MAX_SHIFT, _MAX_SHIFT + 1), key=lambda s: cross[s])
    lags = np.arange(n)
    r = (cross[(shift + lags) % len(cross)] + cross[(shift - lags) % len(cross)]) / 2  # lags +k and -k
    best = 0.0
    for period in range(*_PERIODS):
        multiples = [m for m in (1, 2, 3) if m * period < n // 2]
        best = max(best, float(np.mean([r[m * period] - r[round((m - 0.5) * period)] for m in multiples])))
    return best


def page_features(pixels: np.ndarray) -> np.ndarray:
    """(512, 512, 3) uint8 page (:func:`page_pixels`) -> the :data:`FEATURES` vector."""
    lum = pixels.astype(np.float32) @ _LUMA
    paper = float(np.median(lum))
    # grid lines only: darker than the paper, lighter than ink (traces and text are irregular)
    dark = np.where(lum < 0.45, 0.0, np.clip(paper - lum, 0, 0.45))
    h, w = dark.shape
    columns = np.stack([dark[i * h // _STRIPS:(i + 1) * h // _STRIPS].mean(0) for i in range(_STRIPS)])
    rows = np.stack([dark[:, i * w // _STRIPS:(i + 1) * w // _STRIPS].mean(1) for i in range(_STRIPS)])
    return np.array([paper, float((lum > 0.9).mean()), float(((lum > 0.45) & (lum <= 0.9)).mean()),
                     float(np.log10((lum < 0.35).mean() + 1e-4)),
                     np.log10(_periodicity(columns) + 0.01), np.log10(_periodicity(rows) + 0.01)])


def fit_gate(train: np.ndarray, val: np.ndarray, *, source: str) -> dict:
    """The gate's parameters (JSON-ready) from the training pages' features
    ``train`` (n, 6) and the validation pages' ``val`` (m, 6); ``source`` says
    which pages (for the model card)."""
    from sklearn.covariance import LedoitWolf

    train, val = np.asarray(train, float), np.asarray(val, float)
    if len(train) < 4 or len(val) < 2:
        raise UserError(f"the page gate needs at least 4 training and 2 validation pages, not "
                        f"{len(train)} and {len(val)}: export a run trained on more data.")
    centre = np.median(train, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(train - centre), axis=0), MIN_SCALE)
    precision = LedoitWolf().fit((train - centre) / scale).precision_
    gate = {"version": GATE_VERSION, "features": list(FEATURES), "centre": centre.tolist(),
            "scale": scale.tolist(), "precision": precision.tolist(), "threshold": 0.0,
            "threshold_rule": f"{THRESHOLD_QUANTILE:g} quantile of the validation pages' "
                              f"Mahalanobis distances x {THRESHOLD_MARGIN:g}",
            "n_train": len(train), "n_val": len(val), "source": source, "rejects": REJECTS}
    distances = PageGate(gate).distances(val)
    gate["threshold"] = float(np.quantile(distances, THRESHOLD_QUANTILE) * THRESHOLD_MARGIN)
    gate["val_accepted"] = float(np.mean(distances <= gate["threshold"]))
    return gate


def features_of_files(root: Path | str, rel_paths) -> np.ndarray:
    """:func:`page_features` of each readable image under ``root`` (unreadable ones are skipped)."""
    rows = []
    for rel in rel_paths:
        try:
            with Image.open(Path(root) / rel) as img:
                rows.append(page_features(page_pixels(img)))
        except (OSError, SyntaxError, ValueError):  # the archive's damaged file
            continue
    return np.array(rows).reshape(-1, len(FEATURES))


def gate_from_files(root: Path | str, train_paths, val_paths, *, source: str,
                    max_pages: int = 400, seed: int = 0) -> dict:
    """:func:`fit_gate` on image files (at most ``max_pages`` of each list, drawn with ``seed``)."""
    rng = np.random.default_rng(seed)

    def sample(items):
        items = sorted(items)
        return [items[i] for i in sorted(rng.choice(len(items), max_pages, replace=False))] \
            if len(items) > max_pages else items
    return fit_gate(features_of_files(root, sample(train_paths)), features_of_files(root, sample(val_paths)),
                    source=source)


def gate_for_split(root: Path | str, dataset: str, protocol: str, split_seed: int, cv_fold: str = "") -> dict:
    """The gate of a run's split: fitted on its training pages, thresholded on its
    validation pages (the manifest of ``ecgpaper.data.splits``; ``cv_fold``: a
    cross-validation fold's); what the export writes."""
    from ecgpaper.data.splits import read_manifest

    man = read_manifest(dataset, protocol, split_seed, cv_fold)
    fold = f" {cv_fold}" if cv_fold else ""
    return gate_from_files(root, man.loc[man["subset"] == "train", "path"],
                           man.loc[man["subset"] == "val", "path"],
                           source=f"{dataset}, {protocol} split seed {split_seed}{fold}: training pages "
                                  "(centre, covariance), validation pages (threshold)")


def twin_gate(n_train: int = 24, n_val: int = 12, sizes=((1106, 786), (800, 568), (2213, 1572)),
              seed: int = 0) -> dict:
    """A gate calibrated on freshly drawn twin pages (of ``sizes`` in turn), for
    exports that have no dataset of their own (the tests' tiny model, the serving
    benchmark)."""
    from ecgpaper.config import CLASS_CODES
    from ecgpaper.data.twin_render import render_page

    def features(first: int, count: int) -> np.ndarray:
        pages = (render_page(CLASS_CODES[i % 4], np.random.default_rng(seed * 10_000 + i), sizes[i % len(sizes)],
                             patient_id=f"G{i:04d}", date="2024-01-01 10:00") for i in range(first, first + count))
        return np.array([page_features(page_pixels(Image.open(_jpeg(p)))) for p in pages])
    return fit_gate(features(0, n_train), features(n_train, n_val),
                    source=f"{n_train} + {n_val} freshly drawn synthetic twin pages")


def _jpeg(page: Image.Image):
    import io

    buf = io.BytesIO()
    page.save(buf, "JPEG", quality=90)  # as the twin's files are stored
    buf.seek(0)
    return buf


class PageGate:
    """The calibrated gate (:func:`fit_gate`'s dict); :meth:`check` one page."""

    def __init__(self, params: dict):
        try:
            if params["version"] != GATE_VERSION or list(params["features"]) != list(FEATURES):
                raise ValueError("another version")
            self.centre = np.asarray(params["centre"], float).reshape(len(FEATURES))
            self.scale = np.asarray(params["scale"], float).reshape(len(FEATURES))
            self.precision = np.asarray(params["precision"], float).reshape(len(FEATURES), len(FEATURES))
            self.threshold = float(params["threshold"])
        except (KeyError, TypeError, ValueError):
            raise UserError("the page gate's parameters are missing or of another version; export "
                            "the model again with this version: `python -m ecgpaper export`.") from None
        self.params = params

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` from the training pages."""
        z = (np.atleast_2d(features) - self.centre) / self.scale
        return np.sqrt(np.einsum("ij,jk,ik->i", z, self.precision, z))

    def check(self, pixels: np.ndarray) -> tuple[bool, float]:
        """(accepted, distance) for one page of :func:`page_pixels`."""
        distance = float(self.distances(page_features(pixels))[0])
        return distance <= self.threshold, distance
