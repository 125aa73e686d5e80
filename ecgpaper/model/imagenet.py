"""Keras's ImageNet "notop" files (paper sections 3.2 and 3.5: ImageNet-pretrained
VGG16 and ResNet50, fine-tuned on the ECG images): ``weights_status`` says where
Keras looks for them and whether the file there is usable; ``fetch_imagenet``
downloads them (md5 checked as Keras checks it, atomic rename into Keras's
cache) and ``ensure_imagenet`` tries that briefly and otherwise says, in one
line, which file to place where. ``build_model`` itself never downloads
(``_require_imagenet_file``).

The source can be redirected: ``ECGPAPER_WEIGHTS_BASE_URL`` (or ``base_url=``,
``--base-url``) names a flat mirror folder holding the Keras files under their
own names (``https://host/dir`` or ``file:///dir``).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ecgpaper.errors import UserError
from ecgpaper.model.fetch import WeightsUnreachable, download_file
from ecgpaper.paths import file_digest

BASE_URL_ENV = "ECGPAPER_WEIGHTS_BASE_URL"
#: a local md5sum-format list ("<md5>  <file name>" per line) whose entries replace
#: the md5 Keras checks, for files that are not Keras's own (a private mirror of
#: retrained weights; the paper-mini profile's ImageNet-shaped test files). Runs
#: record it (``weights_provenance``) and REPORT.md gives them no verdict.
MD5SUMS_ENV = "ECGPAPER_WEIGHTS_MD5SUMS"

#: Sizes for which Keras publishes MobileNetV2 ImageNet files; any other size
#: loads the 224 file (Keras's own rule, keras/src/applications/mobilenet_v2.py).
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class _Backbone:
    """Where Keras gets a backbone's ImageNet "notop" file (copied from
    keras/src/applications/*.py: file name, URL folder, the md5 Keras checks)."""

    file_name: str  # "{rows}" is filled in for MobileNetV2
    url_folder: str
    md5: str | None  # None: Keras checks no hash for this file


_BACKBONES: dict[str, _Backbone] = {
    "VGG16": _Backbone(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/",
        "6d6bbae143d832006294945121d1f1fc"),
    "ResNet50": _Backbone(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
        "4d473c1dd8becc155b73f8504c6f6626"),
    "MobileNetV2": _Backbone(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
        None),
    "EfficientNetB0": _Backbone(
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/",
        "50bc09e76180e00e4465e1a485ddc09d"),
}


def _check_backbone(name: str) -> _Backbone:
    if name not in _BACKBONES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(_BACKBONES)}")
    return _BACKBONES[name]


def keras_models_dir(keras_home: str) -> Path:
    """The folder ``keras.utils.get_file(..., cache_subdir="models")`` uses for
    ``keras_home``: Keras falls back to /tmp/.keras when the folder is missing or
    read-only."""
    base = os.path.expanduser(keras_home)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def keras_home_from_env() -> str:
    """Keras's home as Keras derives it: ``$KERAS_HOME``, else ``~/.keras``
    (``/tmp/.keras`` when the home folder is read-only); read now, not at import."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def _listed_md5(file_name: str) -> tuple[str | None, str | None]:
    """(md5, list path) from ``$ECGPAPER_WEIGHTS_MD5SUMS`` for ``file_name``, or (None, None)."""
    listing = os.environ.get(MD5SUMS_ENV)
    if not listing:
        return None, None
    try:
        lines = Path(listing).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"{MD5SUMS_ENV}={listing} cannot be read ({exc}); point it at an md5sum "
                        "list or unset it to check Keras's own hashes") from None
    for line in lines:
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[1].strip().lstrip("*") == file_name:
            return parts[0].lower(), str(Path(listing).resolve())
    return None, None


def weights_status(name: str, *, image_size: int = 224) -> dict:
    """Where Keras looks for ``name``'s ImageNet notop file and whether it is usable.

    Keys: ``model``, ``file_name``, ``folder``, ``path``, ``url``, ``present``,
    ``md5_expected`` (None where Keras checks none), ``md5_ok`` (None when absent
    or unchecked) and ``usable`` (present and not failing the md5 check: what
    ``build_model(weights="imagenet")`` needs). ``image_size`` matters only for
    MobileNetV2, whose file depends on it.
    """
    spec = _check_backbone(name)
    rows = image_size if image_size in _MOBILENET_V2_SIZES else 224
    file_name = spec.file_name.format(rows=rows)
    folder = keras_models_dir(keras_home_from_env())
    path = folder / file_name
    present = path.is_file()
    listed, listing = _listed_md5(file_name)
    expected = listed or spec.md5
    md5_ok = (file_digest(path, "md5") == expected) if present and expected else None
    return {
        "model": name, "file_name": file_name, "folder": str(folder), "path": str(path),
        "url": spec.url_folder + file_name, "present": present,
        "md5_expected": expected, "md5_source": listing or "keras",
        "md5_ok": md5_ok, "usable": present and md5_ok is not False,
    }


def weights_provenance(name: str, *, image_size: int) -> dict:
    """What a run built with ``weights="imagenet"`` loaded: the file, its md5 and
    whose hash it was checked against ("keras": Keras's own, the paper's weights)."""
    st = weights_status(name, image_size=image_size)
    return {"path": st["path"], "md5": file_digest(Path(st["path"]), "md5") if st["present"] else None,
            "md5_source": st["md5_source"]}


@contextlib.contextmanager
def keras_loads_verified_file(name: str, *, image_size: int):
    """Around ``keras.applications.<name>(weights="imagenet")``: Keras builds the
    model and loads the weights its own way, from the file ``weights_status``
    verified. Only for files checked against ``$ECGPAPER_WEIGHTS_MD5SUMS``:
    Keras re-checks the md5 it knows and would then try to download the file
    again. Hand-written: keras.applications has no hook for a verified local
    file that is not its own (a path as ``weights`` skips EfficientNet's
    ImageNet-only input layer)."""
    st = weights_status(name, image_size=image_size)
    if st["md5_source"] == "keras":
        yield
        return
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        if fname == st["file_name"]:
            return st["path"]
        return original(fname, origin, *args, **kwargs)

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _require_imagenet_file(name: str, image_size: int) -> None:
    """Fail fast, with what to do, unless Keras will find the ImageNet file in
    its cache and accept it (then it loads it without touching the network)."""
    st = weights_status(name, image_size=image_size)
    alternatives = ("or build without them: weights='none' (--weights none), or give a "
                    "weights file: weights=PATH (--weights PATH)")
    if not st["present"]:
        raise UserError(
            f"ImageNet weights for {name} are not in Keras's cache and are not downloaded "
            f"here. Run `python -m ecgpaper download --weights {name}` where the network "
            f"allows, or download {st['url']} and place it as {st['path']} (folder "
            f"{st['folder']}; set KERAS_HOME to use another folder), {alternatives}.")
    if not st["usable"]:
        # Keras would treat the file as a failed download: delete it and try the network.
        raise UserError(
            f"{st['path']} is not the file expected for {name} (md5 differs from "
            f"{st['md5_expected']}): it is damaged or another file, and Keras would delete it "
            f"and try to download. Replace it with {st['url']} (`python -m ecgpaper download "
            f"--weights {name}` does that), {alternatives}.")
    from keras.src.backend.config import keras_home  # what Keras read at import

    if keras_models_dir(keras_home()) != Path(st["folder"]):
        raise UserError(
            f"KERAS_HOME changed after Keras was imported: the file is in {st['folder']} but "
            f"Keras looks in {keras_models_dir(keras_home())}. Set KERAS_HOME before starting "
            f"Python (or the notebook kernel), or pass weights={st['path']!r}.")



def _base_url(base_url: str | None) -> str | None:
    return (base_url or os.environ.get(BASE_URL_ENV) or "").rstrip("/") or None


def _source_url(status: dict, base_url: str | None) -> str:
    """Keras's origin for the file, or ``<base_url>/<file name>`` on a flat mirror."""
    return f"{base_url}/{status['file_name']}" if base_url else status["url"]


def fetch_imagenet(names: str | Iterable[str] | None, *, image_size: int = 224,
                   timeout: float = 10.0, base_url: str | None = None,
                   log: Callable[..., object] = print) -> list[dict]:
    """Download the Keras ImageNet notop files of ``names`` into Keras's cache
    (paper sections 3.2 and 3.5 start from ImageNet weights).

    Files already usable (see ``weights_status``) are skipped. Others are
    fetched from Keras's own URL, or from ``<base_url>/<file name>`` when
    ``base_url`` (default ``$ECGPAPER_WEIGHTS_BASE_URL``) names a flat mirror
    (http(s):// or file://), checked against the md5 Keras checks (MobileNetV2
    has none; then only the HDF5 signature is checked) and renamed into place
    atomically. ``timeout``: seconds allowed for opening the connection and for
    each read that stalls (a download that keeps flowing is not cut off).
    ``names`` None: every backbone. Returns ``weights_status`` per model plus
    ``fetched`` (bool) and ``source`` (the URL used, None when skipped).
    Raises ``WeightsUnreachable`` without network, ``UserError`` on a hash mismatch.
    """
    if names is None:
        names = list(_BACKBONES)
    elif isinstance(names, str):
        names = [names]
    for name in names:
        _check_backbone(name)
    base_url = _base_url(base_url)
    results = []
    for name in names:
        st = weights_status(name, image_size=image_size)
        if st["usable"]:
            log(f"{name}: ImageNet weights already in place: {st['path']}")
            results.append({**st, "fetched": False, "source": None})
            continue
        if st["present"]:
            log(f"{name}: {st['path']} fails Keras's md5 check; fetching it again")
        url = _source_url(st, base_url)
        try:
            download_file(url, Path(st["path"]), timeout=timeout, algorithm="md5",
                      expected=st["md5_expected"], log=log, check_hdf5=True,
                      what=f"{name} ImageNet weights", hint=(
                          (f"Check the mirror (--base-url / {BASE_URL_ENV}), or download "
                           if base_url else "Download ")
                          + f"{st['url']} by hand and place it as {st['path']}"))
        except WeightsUnreachable as exc:
            mirror = (f"or put {st['file_name']} on the mirror {base_url}" if base_url else
                      f"or point --base-url / {BASE_URL_ENV} at a mirror holding {st['file_name']}")
            raise WeightsUnreachable(
                f"{exc}. Download {st['url']} where the network allows and place it as "
                f"{st['path']} (set KERAS_HOME before starting Python to use another folder), "
                f"{mirror}", url=url, reason=exc.reason) from None
        results.append({**weights_status(name, image_size=image_size),
                        "fetched": True, "source": url})
    return results


def ensure_imagenet(name: str, *, image_size: int, timeout: float = 5.0,
                    log: Callable[..., object] = print) -> bool:
    """True if ``name``'s ImageNet file is usable now: already in Keras's cache or
    fetched (``fetch_imagenet``) with a short ``timeout``. Without network, logs
    one line saying which file to place where, and returns False (what
    ``weights="auto"`` needs: ImageNet where possible, else random initialisation).
    A file that arrives but fails the hash check still raises ``UserError``."""
    if weights_status(name, image_size=image_size)["usable"]:
        return True
    try:
        fetch_imagenet([name], image_size=image_size, timeout=timeout, log=log)
    except WeightsUnreachable as exc:
        st = weights_status(name, image_size=image_size)
        log(f"ImageNet weights for {name} unavailable: {st['file_name']} is not in {st['folder']} "
            f"and {exc.url} cannot be reached ({exc.reason}); download it where the network "
            f"allows (`python -m ecgpaper download --weights {name}`, or by hand from {exc.url}) "
            f"and place it as {st['path']}")
        return False
    return True
