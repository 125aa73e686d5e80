"""The synthetic twin mirrors the real archive (docs/design_notes.md, "The real
dataset") and carries its class signal in the waveforms only."""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from ecgpaper.config import CLASS_CODES, FILE_PREFIXES, HEADER_CROP_FRACTIONS, KAGGLE_CLASS_FOLDERS
from ecgpaper.data.synthetic import MARKER_FILE, is_synthetic, synthesize
from ecgpaper.data.twin_physiology import SAMPLE_RATE_HZ, simulate_leads
from ecgpaper.data.twin_render import render_page

SMALL_PAGE = (400, 284)
TWIN_PARAMETERS = dict(
    distinct_per_class=10,
    page_size=SMALL_PAGE,
    seed=3,
    near_duplicate_fraction=0.2,
    cross_split_fraction=0.5,
    n_corrupt=2,
    progress=False,
)
IMAGE_NAME = re.compile(r"^(MI|PMI|HB|Normal)\((\d+)\)\.jpg$")


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images(root: Path, marker: dict) -> dict[str, bytes]:
    """Readable image files under ECG_DATA (strays and corrupt files left out)."""
    skip = set(marker["corrupt"])
    return {path: data for path, data in _all_files(root).items()
            if path.startswith("ECG_DATA/") and IMAGE_NAME.match(path.rsplit("/", 1)[1]) and path not in skip}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    return root, synthesize(root, workers=1, **TWIN_PARAMETERS)


# --------------------------------------------------------------------------
# Tree
# --------------------------------------------------------------------------
def test_tree_mirrors_the_real_archive(twin):
    root, marker = twin
    folder_class = {folder: code for code, folder in KAGGLE_CLASS_FOLDERS.items()}
    for split in ("train", "test"):
        folders = {p.name for p in (root / "ECG_DATA" / split).iterdir() if p.is_dir()}
        assert folders == set(KAGGLE_CLASS_FOLDERS.values())
        for folder in folders:
            code = folder_class[folder]
            names = [p.name for p in (root / "ECG_DATA" / split / folder).iterdir() if p.name.endswith(".jpg")]
            matches = [IMAGE_NAME.match(name) for name in names]
            assert all(matches), names
            assert {m.group(1) for m in matches} == {FILE_PREFIXES[code]}
            numbers = sorted(int(m.group(2)) for m in matches)
            assert numbers == list(range(1, len(numbers) + 1))
            assert marker["counts"][split][code] == len(numbers)
    for data in list(_images(root, marker).values())[:8]:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == SMALL_PAGE
    assert json.loads((root / MARKER_FILE).read_text()) == marker
    assert marker["dataset"] == "synthetic" and marker["distinct"] == {c: 10 for c in CLASS_CODES}


def test_regular_copy_pattern_like_the_real_archive(twin):
    """In a folder of n distinct pages, file k shows the page of file k + n (``MI(k)`` equals ``MI(k+n)``)."""
    _, marker = twin
    page_of = {path: i for i, group in enumerate(marker["near_duplicate_groups"]) for path in group}
    for code in CLASS_CODES:
        folder = f"ECG_DATA/test/{KAGGLE_CLASS_FOLDERS[code]}"
        pages = [page_of[f"{folder}/{FILE_PREFIXES[code]}({k}).jpg"] for k in range(1, marker["counts"]["test"][code] + 1)]
        n = len(set(pages))
        assert 1 <= n < len(pages)
        assert all(pages[k] == pages[k + n] for k in range(len(pages) - n))


def test_same_seed_same_bytes_whatever_the_worker_count(twin, tmp_path):
    root, marker = twin
    again = synthesize(tmp_path / "again", workers=2, **TWIN_PARAMETERS)
    assert again == marker
    assert _all_files(tmp_path / "again") == _all_files(root)


def test_another_seed_draws_other_pages(twin, tmp_path):
    root, marker = twin
    other = synthesize(tmp_path / "other", workers=1, **{**TWIN_PARAMETERS, "seed": 4})
    ours, theirs = _images(root, marker), _images(tmp_path / "other", other)
    shared = set(ours) & set(theirs)
    assert shared and all(ours[path] != theirs[path] for path in shared)


def test_distinct_per_class_accepts_a_dict(tmp_path):
    distinct = {"MI": 2, "HMI": 3, "HB": 4, "NORM": 5}
    marker = synthesize(tmp_path / "t", distinct_per_class=distinct, page_size=(200, 142), duplicate_fraction=0,
                        plant_strays=False, n_corrupt=0, workers=1, progress=False)
    assert marker["distinct"] == distinct
    for code, n in distinct.items():
        assert marker["counts"]["train"][code] + marker["counts"]["test"][code] == n
        assert marker["counts"]["test"][code] >= 1
    assert marker["exact_duplicate_groups"] == [] and marker["corrupt"] == [] and marker["strays"] == []


# --------------------------------------------------------------------------
# Planted duplicates
# --------------------------------------------------------------------------
def test_exact_duplicate_groups_are_all_and_only_the_byte_identical_files(twin):
    root, marker = twin
    by_digest: dict[str, list[str]] = {}
    for path, data in _images(root, marker).items():
        by_digest.setdefault(_sha256(data), []).append(path)
    on_disk = sorted(sorted(group) for group in by_digest.values() if len(group) > 1)
    assert on_disk == sorted(sorted(group) for group in marker["exact_duplicate_groups"])


def test_near_duplicates_are_reencoded_and_perceptually_identical(twin):
    root, marker = twin
    images = _images(root, marker)
    reencoded = 0
    for group in marker["near_duplicate_groups"]:
        assert len({path.split("/")[2] for path in group}) == 1, "a group never crosses two classes"
        digests = [_sha256(images[path]) for path in group]
        reencoded += len(set(digests)) - 1
        hashes = [imagehash.phash(Image.open(root / path)) for path in group]
        assert max(h - hashes[0] for h in hashes) <= 8
    assert reencoded >= 1


def test_reencoded_copies_are_closer_than_distinct_pages_on_the_cropped_grid(twin):
    """A 256-bit phash of the crop box tells them apart (a 64-bit phash of the
    whole page does not: the layout all pages share dominates it)."""
    root, marker = twin
    images = _images(root, marker)
    box = tuple(int(f * s) for f, s in zip(HEADER_CROP_FRACTIONS, SMALL_PAGE * 2))

    def crop_hash(path):
        return imagehash.phash(Image.open(root / path).crop(box), hash_size=16)

    same = []
    for group in marker["near_duplicate_groups"]:
        one_per_encoding = list({_sha256(images[path]): path for path in group}.values())
        if len(one_per_encoding) > 1:
            same.append(crop_hash(one_per_encoding[0]) - crop_hash(one_per_encoding[1]))
    firsts = [group[0] for group in marker["near_duplicate_groups"][:13]]
    different = [crop_hash(a) - crop_hash(b) for a, b in zip(firsts, firsts[1:])]
    assert same and max(same) < min(different)


def test_duplicate_fraction_and_cross_split_copies(twin):
    root, marker = twin
    n_images = len(_images(root, marker))
    n_pages = sum(marker["distinct"].values())
    assert abs((n_images - n_pages) / n_images - 0.47) < 0.1
    crossing = [g for g in marker["near_duplicate_groups"] if {p.split("/")[1] for p in g} == {"train", "test"}]
    assert len(crossing) == marker["cross_split_groups"] == 4  # one per class: round(0.5 * 2 test pages)


# --------------------------------------------------------------------------
# Strays, corrupt files, marker and re-runs
# --------------------------------------------------------------------------
def test_corrupt_files_look_like_images_but_do_not_load(twin):
    root, marker = twin
    assert len(marker["corrupt"]) == 2
    assert len({path.split("/")[2] for path in marker["corrupt"]}) == 2  # classes in turn
    for path in marker["corrupt"]:
        assert IMAGE_NAME.match(path.rsplit("/", 1)[1])
        with pytest.raises(OSError):
            with Image.open(root / path) as image:
                image.load()


def test_strays_are_present(twin):
    root, marker = twin
    names = {path.rsplit("/", 1)[1] for path in marker["strays"]}
    assert names == {"desktop.ini", ".DS_Store", "._MI(1).jpg", "MI(1).jpg:Zone.Identifier"}
    assert all((root / path).is_file() for path in marker["strays"])
    assert any(path.startswith("__MACOSX/") for path in marker["strays"])


def test_rerun_is_idempotent_and_other_parameters_are_refused(twin):
    root, marker = twin
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synthesize(root, workers=1, **TWIN_PARAMETERS) == marker
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(ValueError, match="other parameters.*seed"):
        synthesize(root, workers=1, **{**TWIN_PARAMETERS, "seed": 99})


def test_a_non_empty_folder_without_marker_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        synthesize(tmp_path, distinct_per_class=2, page_size=SMALL_PAGE, workers=1, progress=False)


def test_is_synthetic_from_root_data_root_and_image(twin, tmp_path):
    root, marker = twin
    image = next(iter(_images(root, marker)))
    assert is_synthetic(root) and is_synthetic(root / "ECG_DATA") and is_synthetic(root / image)
    assert not is_synthetic(tmp_path)


# --------------------------------------------------------------------------
# Page: text outside the crop box, grid and traces inside
# --------------------------------------------------------------------------
def _crop_box_mask(size):
    width, height = size
    left, top, right, bottom = (f * s for f, s in zip(HEADER_CROP_FRACTIONS, (width, height, width, height)))
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs >= left - 1) & (xs <= right + 1) & (ys >= top - 1) & (ys <= bottom + 1), int(top), int(bottom)


@pytest.mark.parametrize("size", [SMALL_PAGE, (1106, 786)])
@pytest.mark.parametrize("code", CLASS_CODES)
def test_header_and_footer_lie_outside_the_crop_box(code, size):
    inside, top, bottom = _crop_box_mask(size)
    for seed in range(3):
        page = np.asarray(render_page(code, np.random.default_rng(seed), size,
                                      patient_id="0000-0000", date="2000-01-01 00:00")).astype(int)
        relabelled = np.asarray(render_page(code, np.random.default_rng(seed), size,
                                            patient_id="9871-2345", date="2025-12-31 23:59")).astype(int)
        changed = (page != relabelled).any(axis=2)
        assert changed.any() and not (changed & inside).any(), "id and date must be cropped away"

        red, green = page[..., 0], page[..., 1]
        pink = (red > 150) & (red - green > 25)
        assert not (pink & ~inside).any(), "the grid must lie inside the crop box"
        assert pink[inside].mean() > 0.05
        dark = page.max(axis=2) < 110
        assert dark[:top].any() and dark[bottom + 1:].any(), "header and footer text"
        assert dark[inside].mean() > 0.002, "traces"


def test_render_page_is_deterministic_and_checks_the_class():
    def draw(seed):
        return np.asarray(render_page("HB", np.random.default_rng(seed), SMALL_PAGE, patient_id="1", date="d"))

    assert np.array_equal(draw(5), draw(5))
    assert not np.array_equal(draw(5), draw(6))
    with pytest.raises(ValueError, match="unknown class"):
        render_page("AF", np.random.default_rng(0), SMALL_PAGE, patient_id="1", date="d")


def test_render_page_draws_the_leads_it_is_given():
    """The real-signal pages of benchmarks/bench_ood.py: a recording's leads on the twin's paper."""
    from ecgpaper.data.twin_render import LEAD_NAMES

    t = np.arange(int(10 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    flat = {lead: np.zeros_like(t) for lead in LEAD_NAMES}
    spiky = {lead: 1.5 * (np.sin(2 * np.pi * t) > 0.99) for lead in LEAD_NAMES}

    def draw(leads):
        return np.asarray(render_page(None, np.random.default_rng(3), SMALL_PAGE, patient_id="1", date="d",
                                      leads=leads, heart_rate=60)).astype(int)

    inside, _, _ = _crop_box_mask(SMALL_PAGE)
    dark_flat, dark_spiky = ((draw(leads).max(axis=2) < 110) & inside for leads in (flat, spiky))
    assert dark_spiky.sum() > 1.2 * dark_flat.sum()  # the spikes are drawn, on the same paper
    rows_flat = np.flatnonzero(dark_flat.any(axis=1))
    rows_spiky = np.flatnonzero(dark_spiky.any(axis=1))
    assert len(rows_spiky) > len(rows_flat)  # 1.5 mV spikes reach rows a flat trace never does
    with pytest.raises(ValueError, match="missing"):
        render_page(None, np.random.default_rng(3), SMALL_PAGE, patient_id="1", date="d",
                    leads={"I": t}, heart_rate=60)


# --------------------------------------------------------------------------
# Classes differ in clinically meaningful ways (measured on the 12 leads)
# --------------------------------------------------------------------------
def _beat_level(signal, qrs, offset, half_width=0.01):
    """Median over beats of the mean signal in a window ``offset`` s after each R."""
    half = int(half_width * SAMPLE_RATE_HZ)
    values = []
    for r in qrs:
        i = int(round((r + offset) * SAMPLE_RATE_HZ))
        if half <= i < len(signal) - half:
            values.append(signal[i - half:i + half + 1].mean())
    return float(np.median(values))


def _features(code, seed):
    leads, qrs = simulate_leads(code, np.random.default_rng([seed, 7]))
    rr = np.diff(qrs)
    baseline = {lead: _beat_level(v, qrs, -0.07) for lead, v in leads.items()}  # PR segment
    st = {lead: _beat_level(v, qrs, 0.08) - baseline[lead] for lead, v in leads.items()}
    q = {lead: _beat_level(v, qrs, -0.02, 0.005) - baseline[lead] for lead, v in leads.items() if lead != "aVR"}
    return {"rr_cv": rr.std() / rr.mean(), "st_max": max(st.values()), "st_min": min(st.values()),
            "q_min": min(q.values())}


@pytest.fixture(scope="module")
def features():
    return {code: [_features(code, seed) for seed in range(20)] for code in CLASS_CODES}


def test_abnormal_heartbeat_has_an_irregular_rhythm(features):
    assert min(f["rr_cv"] for f in features["HB"]) > 0.1
    assert max(f["rr_cv"] for c in ("NORM", "MI", "HMI") for f in features[c]) < 0.06


def test_acute_mi_has_st_elevation_with_reciprocal_depression(features):
    assert all(f["st_max"] >= 0.08 and f["st_min"] < -0.02 for f in features["MI"])
    assert max(f["st_max"] for c in ("NORM", "HMI") for f in features[c]) < 0.08


def test_old_mi_has_pathological_q_waves(features):
    assert max(f["q_min"] for f in features["HMI"]) < -0.15
    assert min(f["q_min"] for c in ("NORM", "MI") for f in features[c]) > -0.15
