"""A stand-in for Keras's ImageNet weight server, for the paper-mini profile's CI
run (tests/test_paper_mini.py): a folder of Keras-applications "notop" files of
the four backbones, of the right architectures and in Keras's own legacy HDF5
layout, with an md5sum list, served over loopback HTTP.

The weights are random (Keras's initialisers, He-normal for VGG16's convolutions;
there is no way to get ImageNet's here), so the runs may learn little: the miniature proves the paper profile's
code path (fetch, hash check, ``keras.applications(weights="imagenet")``,
/255, whole network, checkpoint rule, every notebook), not its accuracy.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np

#: the backbones whose files the mirror holds (every one a notebook builds)
BACKBONES = ("VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0")


def write_mirror(folder: Path, *, image_size: int) -> Path:
    """Write one notop file per backbone (the name Keras asks for at ``image_size``)
    and ``MD5SUMS`` (``<md5>  <file name>``) into ``folder``; returns the list's path."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from ecgpaper.model.imagenet import weights_status

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in BACKBONES:
        file_name = weights_status(name, image_size=image_size)["file_name"]
        keras.utils.set_random_seed(0)
        # built as keras.applications builds it for "imagenet" (the same layers, so the
        # legacy loader matches them by order), with random weights
        model = getattr(keras.applications, name)(include_top=False, weights=None,
                                                   input_shape=(image_size, image_size, 3))
        if name == "VGG16":
            _variance_preserving(model)
        with h5py.File(folder / file_name, "w") as f:
            save_weights_to_hdf5_group(f, model)
        keras.backend.clear_session()
        lines.append(f"{hashlib.md5((folder / file_name).read_bytes()).hexdigest()}  {file_name}")
    listing = folder / "MD5SUMS"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _variance_preserving(model) -> None:
    """He-normal kernels, zero biases: Keras's Glorot default shrinks the signal at
    each of VGG16's 13 ReLU layers (no BatchNorm to undo it), so a random VGG16 needs
    ~170 steps to overfit one batch; trained weights keep the scale, like these."""
    import keras

    init = keras.initializers.HeNormal(seed=0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([np.asarray(init(kernel.shape)), np.zeros_like(bias)])


@contextlib.contextmanager
def serve_folder(folder: Path):
    """Serve ``folder`` on a free loopback port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


def run_paper_mini(root: Path, *, log=print) -> dict:
    """Every notebook on the paper-mini profile, the weights fetched from a loopback
    mirror in ``root/mirror`` into a fresh Keras cache ``root/keras`` (the GPU
    check passed explicitly: ECGPAPER_ALLOW_CPU=1). ``ecgpaper.paths`` must
    already point at the project root to use (``root/project``: conftest.point_paths,
    or ECGPAPER_ROOT set before import); the environment is restored afterwards."""
    import os

    from ecgpaper.config import PROFILES
    from ecgpaper.runner import run_notebooks
    from ecgpaper.runs import experiments

    root = Path(root)
    listing = write_mirror(root / "mirror", image_size=PROFILES["paper-mini"].image_size)
    # Keras (and weights_status) fall back to /tmp/.keras when KERAS_HOME does not exist
    (root / "keras").mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update({"KERAS_HOME": str(root / "keras"), "ECGPAPER_WEIGHTS_MD5SUMS": str(listing),
                       "ECGPAPER_ALLOW_CPU": "1"})
    experiments._RESOLVED.clear()
    lines: list[str] = []

    def say(*parts):
        lines.append(" ".join(map(str, parts)))
        log(*parts)

    try:
        with serve_folder(root / "mirror") as url:
            os.environ["ECGPAPER_WEIGHTS_BASE_URL"] = url
            report = run_notebooks("paper-mini", log=say)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        experiments._RESOLVED.clear()
    (root / "log.txt").write_text("\n".join(lines) + "\n")
    return {"root": root / "project", "report": report, "log": "\n".join(lines),
            "keras": root / "keras", "listing": listing}


def finished_run(root: Path) -> dict:
    """What :func:`run_paper_mini` returned, for a run made by ``__main__`` (./run_tests.sh)."""
    root = Path(root)
    if not (root / "DONE").exists():
        raise RuntimeError(f"the paper-mini run in {root} did not finish; its log: {root / 'log.txt'}")
    return {"root": root / "project", "report": Path((root / "DONE").read_text().strip()),
            "log": (root / "log.txt").read_text(), "keras": root / "keras",
            "listing": root / "mirror" / "MD5SUMS"}


if __name__ == "__main__":
    # ./run_tests.sh runs the miniature in the background: python tests/support/imagenet_mirror.py ROOT
    import os
    import sys

    target = Path(sys.argv[1])
    os.environ["ECGPAPER_ROOT"] = str(target / "project")  # before ecgpaper is imported
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    result = run_paper_mini(target)
    (target / "DONE").write_text(f"{result['report']}\n")
