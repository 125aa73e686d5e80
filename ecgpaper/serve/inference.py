"""Classify one uploaded ECG image with the exported model (paper section 3.4).

:class:`Classifier` is loaded once per process from ``models/`` (what
``python -m ecgpaper export`` writes): it checks the model file against the
metadata's sha256, loads it in Keras's safe mode, and compiles one
``tf.function`` for the plain forward pass and one for the forward pass with
Grad-CAM (section 5.2's missing interpretability), so a request costs one
graph call, never a ``model.predict``. Preprocessing is
:func:`ecgpaper.data.preprocess.prepare_image` with the settings recorded at
export, the very code that built the training cache: training and serving
cannot disagree.

:func:`decode_upload` turns untrusted bytes into an image or a clinician-
readable :class:`InvalidImage` (empty, too large, too many pixels, not an
image, SVG/HTML, damaged, animated). Before the model sees an upload, the page
gate exported with it (``ecgpaper.data.pagegate``, issue 22 item 9) checks that
it is a 12-lead ECG report page at all: anything else is ``InvalidImage("not_an_ecg")``
and gets no class.
"""
from __future__ import annotations

import contextlib
import io
import logging
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ecgpaper.config import HEADER_CROP_FRACTIONS
from ecgpaper.data.pagegate import PageGate, page_pixels
from ecgpaper.data.preprocess import PreprocessSettings, decode_reduced, finish_image
from ecgpaper.errors import UserError
from ecgpaper.metrics import apply_temperature
from ecgpaper.model.pipeline import scaling_fn
from ecgpaper.runs.export import ModelUnavailable, verified_export

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: a 24-megapixel phone photo passes; decoding stays well inside a worker's memory
MAX_PIXELS = 25_000_000

#: a progressive JPEG decodes each of its scans over the whole image: a "scan bomb" of
#: thousands of empty scans costs minutes of CPU. Encoders write about 10 (libjpeg's
#: default progression) and at most a few dozen (issue 22, finding 8)
MAX_JPEG_SCANS = 32

#: what Pillow may open: raster formats a scanner, phone or ECG cart writes.
#: (Pillow's EPS plugin would run Ghostscript; formats outside this list are refused.)
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG includes MPO

#: file extension for each accepted format, for storing uploads under generated names
FORMAT_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp",
                     "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}

class InvalidImage(UserError):
    """An upload that cannot be classified; ``code`` is the API's short error code."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _looks_like_markup(data: bytes) -> bool:
    """SVG, HTML or XML: worth a message of its own (people export ECGs as SVG)."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<") or b"<svg" in head or b"<html" in head


@contextlib.contextmanager
def decoding_errors():
    """Turn Pillow's failures to read a file (truncated, corrupt data) into InvalidImage.

    Wraps only the steps that read compressed data (opening, ``decode_reduced``,
    ``load``): Pillow's plugins report damaged data as any of these exception
    types, so the list is broad, and the exception's own text (decoder
    internals) goes to the server log, never to the client.
    """
    try:
        yield
    except Image.DecompressionBombError:
        raise InvalidImage("too_many_pixels",
                           "The image has more pixels than this service accepts. Upload a "
                           "smaller scan or photo of the ECG (e.g. at most 4000 x 3000).") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        log.info("undecodable upload: %s: %s", type(exc).__name__, exc)
        raise InvalidImage("invalid_image",
                           "The image file is damaged or incomplete (it could not be decoded). "
                           "Export or save the ECG image again and re-upload it.") from None


def decode_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
                  load: bool = True) -> Image.Image:
    """Untrusted upload bytes -> a checked ``PIL.Image``, or :class:`InvalidImage`.

    Checked before any pixel is decoded: empty, over ``max_bytes``, markup
    (SVG/HTML), not an accepted raster format, more than ``max_pixels`` in its
    header (a decompression bomb is refused from its header alone), several
    frames (animated GIF/PNG/WebP, multi-page TIFF; a camera's MPO JPEG keeps
    its primary picture). ``load=True`` then decodes every pixel, which finds
    truncated or corrupt files; ``load=False`` leaves decoding to the caller,
    inside :func:`decoding_errors` (the classifier does so, so that a JPEG is
    decoded once, at the reduced scale ``prepare_image`` picks).
    """
    if not data:
        raise InvalidImage("empty_file", "The file is empty (0 bytes). Choose the ECG image "
                                         "again and re-upload it.")
    if len(data) > max_bytes:
        raise InvalidImage("too_large", f"The file is {len(data) / 2**20:.1f} MB; the limit is "
                                        f"{max_bytes / 2**20:.0f} MB. Upload a smaller (e.g. JPEG) "
                                        "copy of the ECG.")
    with decoding_errors():
        try:
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Image.UnidentifiedImageError:
            what = ("a text document (SVG or HTML), not a picture" if _looks_like_markup(data)
                    else "not an image this service can read")
            raise InvalidImage("invalid_image", f"This file is {what}. Upload the ECG as a PNG, "
                                                "JPEG, WebP or TIFF image.") from None
    width, height = img.size
    if width * height > max_pixels:
        raise InvalidImage("too_many_pixels",
                           f"The image is {width} x {height} pixels ({width * height / 1e6:.0f} "
                           f"megapixels); the limit is {max_pixels / 1e6:.0f} megapixels. Upload a "
                           "smaller scan or photo of the ECG.")
    # is_animated reads one frame header past the first: n_frames would walk a TIFF's whole
    # chain of pages (thousands of them cost seconds) before refusing it
    if getattr(img, "is_animated", False) and img.format != "MPO":
        raise InvalidImage("animated_image",
                           "The file holds several frames or pages (an animation or a multi-page "
                           "document). Upload a single still image of the ECG.")
    if img.format in ("JPEG", "MPO"):
        scans = data.count(b"\xff\xda")  # SOS markers (entropy-coded data never holds FF DA)
        if scans > MAX_JPEG_SCANS:
            raise InvalidImage("too_complex",
                               f"The JPEG is stored in {scans} scans; this service decodes at most "
                               f"{MAX_JPEG_SCANS}. Save the ECG again as an ordinary (baseline) "
                               "JPEG or as PNG and re-upload it.")
    if load:
        with decoding_errors():
            img.load()
    return img


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class Classifier:
    """The exported model, ready to classify (load once per process)."""

    def __init__(self, models_dir: Path | str | None = None):
        meta, model_file = verified_export(models_dir)
        prep = meta["preprocessing"]
        self.metadata = meta
        #: the run's temperature scaling (fitted on its validation set): every answer is calibrated
        self.temperature = float(meta["temperature"])
        self.class_codes: list[str] = list(meta["class_codes"])
        self.class_names: list[str] = list(meta["class_names"])
        self.settings = PreprocessSettings(size=int(meta["input_size"]), fit=prep["fit"],
                                           crop=bool(prep["crop"]))
        try:
            self.gate = PageGate(meta["page_gate"])
        except UserError as exc:
            raise ModelUnavailable(str(exc)) from None

        import keras  # TensorFlow only once there is a model to load
        import tensorflow as tf

        from ecgpaper.model.gradcam import gradcam_model, gradcam_tensors

        self.model = keras.models.load_model(model_file, safe_mode=True, compile=False)
        classes = len(self.class_codes)
        shape = tuple(self.model.output_shape) if isinstance(self.model.output_shape, tuple) else None
        if shape is None or len(shape) != 2 or shape[-1] != classes:
            raise ModelUnavailable(f"{model_file.name} answers with shape {self.model.output_shape}, "
                                   f"not (batch, {classes}) class probabilities as its metadata "
                                   "lists; export a model of this package again.")
        scale = scaling_fn(prep["scaling"], meta["model"])
        grad_model = gradcam_model(self.model)
        n = self.settings.size
        signature = [tf.TensorSpec((None, n, n, 3), tf.uint8)]

        @tf.function(input_signature=signature)
        def predict(x):
            return self.model(scale(x), training=False)

        @tf.function(input_signature=signature)
        def predict_and_explain(x):
            return gradcam_tensors(grad_model, scale(x))

        self._predict = predict
        self._predict_and_explain = predict_and_explain
        warm = np.zeros((1, n, n, 3), np.uint8)
        p = np.asarray(self._predict(warm), float)
        if p.shape != (1, classes) or not (np.all(p >= 0) and abs(p.sum() - 1) < 1e-2):
            raise ModelUnavailable(f"{model_file.name} answers {np.round(p, 3).tolist()} for a blank "
                                   "image: not class probabilities (no softmax?); export a model "
                                   "of this package again.")
        self._predict_and_explain(warm)

    def forward(self, batch_uint8: np.ndarray, *, explain: bool = False):
        """The compiled forward pass on a uint8 ``(n, size, size, 3)`` batch:
        calibrated probabilities (the export's ``temperature``,
        ``metrics.apply_temperature``), and the heat maps too when ``explain``."""
        if explain:
            probabilities, heatmaps = self._predict_and_explain(batch_uint8)
            return apply_temperature(probabilities.numpy(), self.temperature), heatmaps.numpy()
        return apply_temperature(self._predict(batch_uint8).numpy(), self.temperature)

    def check_page(self, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                   max_pixels: int = MAX_PIXELS) -> float:
        """The page gate on upload bytes: its distance from the training pages, or
        ``InvalidImage("not_an_ecg")`` when the upload is not a 12-lead ECG report page
        (or :func:`decode_upload`'s refusals). Decodes the upload at the gate's own
        resolution, apart from the model's decoding, which stays the training cache's."""
        image = decode_upload(data, max_bytes=max_bytes, max_pixels=max_pixels, load=False)
        with decoding_errors():
            pixels = page_pixels(image)
        accepted, distance = self.gate.check(pixels)
        if not accepted:
            log.info("not an ECG page: gate distance %.2f > threshold %.2f", distance, self.gate.threshold)
            raise InvalidImage("not_an_ecg",
                               "This image does not look like a 12-lead ECG report page (no ECG grid "
                               "with traces was found), so it was not classified. Upload a scan or "
                               "photo of the whole ECG page.")
        return distance

    def classify(self, data: bytes, *, explain: bool = True, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_PIXELS) -> dict:
        """Upload bytes -> class, probabilities, Grad-CAM overlay PNG (None unless
        ``explain``), the page gate's distance and timings in ms. Checked first by
        :func:`decode_upload` (with ``max_bytes`` and ``max_pixels``) and the page
        gate (:meth:`check_page`): :class:`InvalidImage` for anything else."""
        t0 = time.perf_counter()
        gate_distance = self.check_page(data, max_bytes=max_bytes, max_pixels=max_pixels)
        image = decode_upload(data, max_bytes=max_bytes, max_pixels=max_pixels, load=False)
        with decoding_errors():
            decoded = decode_reduced(image, self.settings)
        pixels = finish_image(decoded, self.settings)
        del decoded, image
        t1 = time.perf_counter()
        batch = pixels[np.newaxis]
        if explain:
            probabilities, heatmaps = self.forward(batch, explain=True)
        else:
            probabilities, heatmaps = self.forward(batch), None
        t2 = time.perf_counter()
        heatmap_png = None
        if explain:
            from ecgpaper.model.gradcam import overlay

            heatmap_png = _png_bytes(overlay(pixels, heatmaps[0]))
        t3 = time.perf_counter()
        p = probabilities[0].astype(float)
        best = int(np.argmax(p))
        return {
            "class_code": self.class_codes[best],
            "class_name": self.class_names[best],
            "probabilities": {code: float(v) for code, v in zip(self.class_codes, p)},
            "heatmap_png": heatmap_png, "page_gate_distance": gate_distance,
            "timings": {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3,
                        "heatmap_ms": (t3 - t2) * 1e3, "total_ms": (t3 - t0) * 1e3},
        }


#: what :func:`stored_copy` writes, per uploaded format: JPEG stays JPEG, the rest lossless PNG
_STORED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG"}
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
_JPEG_MODES = ("L", "RGB", "CMYK")


def stored_copy(data: bytes, *, blank_header: bool = False,
                crop_header: bool = False) -> tuple[bytes, str]:
    """Upload bytes (already checked by :func:`decode_upload`) -> the copy to keep
    and its file extension: the picture only, upright, without any metadata (EXIF with
    GPS, camera and date, XMP, ICC, PNG text chunks, comments) that may name the
    patient. With ``crop_header`` the header band is cut off; with ``blank_header``
    the header band (the box of docs/design_notes.md, where ECG carts
    print the patient's name and id) is painted white too (paper section 5.3).

    Re-encoding is the only way to drop every metadata kind and to blank pixels:
    JPEG uploads are re-encoded as JPEG (quality 95), all others as lossless PNG.
    Memory: one full decode of the image (rotation and blanking work in place).
    """
    with decoding_errors():
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        img.load()
    orientation = img.getexif().get(0x0112, 1)
    fmt = _STORED_FORMATS.get(img.format, "PNG")
    allowed = _JPEG_MODES if fmt == "JPEG" else _PNG_MODES
    if img.mode not in allowed:  # e.g. CMYK TIFF, float TIFF, I;16B
        img = img.convert("RGBA" if "A" in img.mode else ("I" if img.mode[0] in "IF" else "RGB"))
    if orientation != 1:
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
    if crop_header:  # the band is cut off (the web service's default, issue 22)
        img = img.crop((0, round(HEADER_CROP_FRACTIONS[1] * img.height), img.width, img.height))
    elif blank_header:
        if img.mode == "P":  # a palette may hold no white: paint in colour
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        top = round(HEADER_CROP_FRACTIONS[1] * img.height)
        white = {"1": 1, "L": 255, "LA": (255, 255), "I": 65535, "I;16": 65535, "RGB": (255,) * 3,
                 "RGBA": (255,) * 4, "CMYK": (0, 0, 0, 0)}[img.mode]
        img.paste(white, (0, 0, img.width, top))
    # Pillow's encoders copy some of what they read (JPEG comment, ICC profile, EXIF)
    # from ``info``: keep only what draws the picture (a palette's transparent index)
    img.info = {key: img.info[key] for key in ("transparency",) if key in img.info}
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=95)
    else:  # level 1: a tenth of level 6's CPU on a full page, for a somewhat larger file
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), FORMAT_EXTENSIONS[fmt]
