"""The page gate (issue 22, item 9): an upload that is not a 12-lead ECG report
page gets no class. On tiny data: a gate calibrated on two dozen twin pages
(tests/support/model.py) lets new ECG pages through and turns away a blank
page, noise, a photo and a letter, in the library and in the Classifier the
web service uses; the export refuses a gate the service could not load."""
from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
from PIL import Image
from support.images import encode, not_ecg_uploads
from support.model import tiny_export, tiny_gate

from ecgpaper.config import CLASS_CODES
from ecgpaper.data.pagegate import PageGate, page_pixels
from ecgpaper.data.twin_render import render_page
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace


@functools.cache
def ecg_pages() -> dict[str, bytes]:
    """Pages the gate never saw (other seeds, sizes, greyscale, on their side)."""
    pages = {f"page-{i}": render_page(CLASS_CODES[i % 4], np.random.default_rng(500 + i), size,
                                      patient_id=f"P{i}", date="2024-01-01 10:00")
             for i, size in enumerate([(1106, 786), (2213, 1572), (600, 426)])}
    pages["grey"] = pages["page-0"].convert("L")
    pages["on its side"] = pages["page-1"].rotate(90, expand=True)
    return {name: encode(page) for name, page in pages.items()}


def gate_distance(gate: PageGate, data: bytes) -> tuple[bool, float]:
    return gate.check(page_pixels(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("name", ["page-0", "page-1", "page-2", "grey", "on its side"])
def test_ecg_pages_pass_the_gate(name):
    gate = PageGate(tiny_gate())
    accepted, distance = gate_distance(gate, ecg_pages()[name])
    assert accepted, f"{name}: distance {distance:.2f} > threshold {gate.threshold:.2f}"


@pytest.mark.parametrize("name", ["blank.png", "noise.png", "photo.jpg", "letter.jpg"])
def test_what_is_not_an_ecg_page_is_rejected(name):
    gate = PageGate(tiny_gate())
    accepted, distance = gate_distance(gate, not_ecg_uploads()[name])
    assert not accepted, f"{name}: distance {distance:.2f} <= threshold {gate.threshold:.2f}"


def test_the_gate_is_calibrated_on_its_validation_pages():
    params = tiny_gate()
    assert params["n_train"] == 16 and params["n_val"] == 8 and params["val_accepted"] == 1.0
    assert params["threshold"] > 0 and "blank" in params["rejects"] and "MRI" in params["rejects"]
    json.dumps(params)  # goes into the export's metadata as it is


def test_the_classifier_refuses_a_non_ecg_upload_and_classifies_an_ecg(tmp_path):
    from ecgpaper.serve.inference import Classifier, InvalidImage

    classifier = Classifier(tiny_export(tmp_path / "models"))
    with pytest.raises(InvalidImage) as refused:
        classifier.classify(not_ecg_uploads()["blank.png"])
    assert refused.value.code == "not_an_ecg" and "12-lead ECG report page" in refused.value.detail
    result = classifier.classify(ecg_pages()["page-0"], explain=False)
    assert result["class_code"] in CLASS_CODES and 0 <= result["page_gate_distance"] <= classifier.gate.threshold


def test_an_export_without_a_usable_gate_is_refused(tmp_path):
    from ecgpaper.runs.export import ModelUnavailable, write_export
    from ecgpaper.serve.inference import Classifier

    models = tiny_export(tmp_path / "models")
    with pytest.raises(UserError, match="page gate's parameters are missing"):
        write_export(models / "ecg_classifier.keras", {"model": "VGG16", "image_size": 64, "scaling": "rescale",
                     "fit": "resize", "crop": False, "protocol": "grouped"}, Workspace("synthetic-smoke", "smoke"),
                     run_id="x", metrics={}, selected_by="test", page_gate={"version": 0}, dest=tmp_path / "other")
    meta_file = models / "ecg_classifier.json"
    meta = json.loads(meta_file.read_text())
    meta["page_gate"] = {**meta["page_gate"], "version": 99}  # from another version of the package
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="export the model again"):
        Classifier(models)
    del meta["page_gate"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="lacks page_gate"):
        Classifier(models)
