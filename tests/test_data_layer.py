"""Discovery, inventory, audit, splits and cache on a tree shaped like the real archive."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecgpaper.config import CLASS_CODES, KAGGLE_CLASS_FOLDERS, SPLIT_FRACTIONS
from ecgpaper.data import splits as splits_mod
from ecgpaper.data.audit import run_audit, write_audit
from ecgpaper.data.discovery import class_of_folder, discover, is_stray, parse_class_map
from ecgpaper.data.inventory import build_inventory, read_inventory, write_inventory
from ecgpaper.data.prepare import prepare_data
from ecgpaper.data.geometry import crop_box
from ecgpaper.data.preprocess import PreprocessSettings, build_cache, load_image
from ecgpaper.data.splits import make_manifest
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace


# ---------------------------------------------------------------- class names
@pytest.mark.parametrize("name,code", [
    ("ECG Images of Myocardial Infarction Patients (240x12=2880)", "MI"),
    ("ECG Images of Patient that have History of MI (172x12=2064)", "HMI"),
    ("ECG Images of Patient that have abnormal heartbeat (233x12=2796)", "HB"),
    ("Normal Person ECG Images (284x12=3408)", "NORM"),
    ("myocardial_infarction_ecg_images", "MI"),
    ("history_of_mi_ecg_images", "HMI"),
    ("abnormal_heartbeat_ecg_images", "HB"),
    ("normal_ecg_images", "NORM"),
    ("NORMAL", "NORM"),
    ("ECG_DATA", None), ("train", None), ("ecg data new version", None), ("MIscellaneous", None),
])
def test_class_folder_names_map_by_meaning(name, code):
    assert class_of_folder(name) == code


def test_user_class_map_overrides_builtin_rules(tmp_path):
    for folder in ("weird A", "weird B", "weird C", "Normal Person ECG Images (284x12=3408)"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x(1).jpg")
    with pytest.raises(UserError, match="class-map"):
        parse_class_map(["weird*=XX"])
    d = discover(tmp_path, class_map=parse_class_map(["weird a=MI", "weird b=HMI", "weird c=HB",
                                                      "normal person*=HB"]))
    assert d.counts() == {"MI": 1, "HMI": 1, "HB": 2, "NORM": 0}
    assert discover(tmp_path).unmapped_folders == ["weird A", "weird B", "weird C"]


@pytest.mark.parametrize("rel,stray", [
    ("__MACOSX/ECG_DATA/x/._MI(1).jpg", True), ("a/desktop.ini", True), ("a/.DS_Store", True),
    ("a/MI(1).jpg:Zone.Identifier", True), ("a/._MI(1).jpg", True), ("a/readme.txt", True),
    ("a/MI(1).jpg", False), ("a/MI(1).JPEG", False), ("a/PMI(2).PNG", False),
])
def test_stray_files_are_recognised(rel, stray):
    from pathlib import PurePosixPath
    assert (is_stray(PurePosixPath(rel)) is not None) == stray


# ---------------------------------------------------------------- discovery
def test_discovery_reads_the_real_layout_and_picks_the_largest_copy(real_like_tree):
    d = discover(real_like_tree)
    assert d.copy == "ECG_DATA"
    assert d.copies == {"ECG_DATA": 105, "ecg_data_new_version/ecg data new version": 12}
    assert d.counts() == {"MI": 26, "HMI": 26, "HB": 27, "NORM": 26}
    assert {f.source_split for f in d.files} == {"train", "test"}
    assert not any("__MACOSX" in f.path or ":" in f.path for f in d.files)
    skipped = dict(d.skipped)
    assert any("Zone.Identifier" in p for p in skipped)
    assert any(p.endswith("desktop.ini") for p in skipped)
    assert "copies of the data found" in d.describe()


def test_discovery_uses_the_copy_the_user_names(real_like_tree):
    d = discover(real_like_tree, copy="ecg_data_new_version/ecg data new version")
    assert d.counts() == {c: 3 for c in CLASS_CODES}
    assert {f.source_split for f in d.files} == {""}
    with pytest.raises(UserError, match="copies found"):
        discover(real_like_tree, copy="nope")


def test_missing_or_empty_root_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="--data-root"):
        discover(tmp_path / "absent")
    with pytest.raises(UserError, match="no ECG images"):
        discover(tmp_path)


# ---------------------------------------------------------------- inventory
def test_inventory_lists_the_truncated_jpeg_as_unreadable(real_like_tree):
    inv = build_inventory(discover(real_like_tree), workers=2, progress=False)
    assert len(inv) == 105
    bad = inv[~inv["readable"]]
    assert list(bad["path"]) == [f"ECG_DATA/train/{KAGGLE_CLASS_FOLDERS['HB']}/HB(99).jpg"]
    assert bad["error"].iloc[0]  # the reason is recorded
    ok = inv[inv["readable"]]
    assert (ok["width"] == 220).all() and (ok["height"] == 156).all()
    assert ok["sha256"].str.len().eq(64).all() and ok["phash"].str.len().eq(64).all()


def test_inventory_round_trips_and_reuses_unchanged_rows(real_like_tree, monkeypatch):
    d = discover(real_like_tree)
    inv = build_inventory(d, workers=1, progress=False)
    write_inventory(inv, "kaggle-archive", d)
    back = read_inventory("kaggle-archive")
    pd.testing.assert_frame_equal(back[["path", "sha256", "readable"]], inv[["path", "sha256", "readable"]])
    import ecgpaper.data.inventory as inv_mod
    monkeypatch.setattr(inv_mod, "inspect_file", lambda p: pytest.fail("row was not reused"))
    again = build_inventory(d, previous=back, workers=1, progress=False)
    assert list(again["sha256"]) == list(inv["sha256"])


# ---------------------------------------------------------------- audit
@pytest.fixture
def audited(real_like_tree):
    inv = build_inventory(discover(real_like_tree), workers=2, progress=False)
    return run_audit(inv)


def test_audit_counts_distinct_images_and_copies(audited):
    per = audited.per_class.set_index("class")
    for code in CLASS_CODES:
        assert per.loc[code, "files"] == 26
        assert per.loc[code, "distinct_exact"] == 18  # 6 test + 10 train + near copy + png
        assert per.loc[code, "distinct_groups"] == 17  # the re-encoded copy joins its original
    s = audited.summary
    assert s["n_unreadable"] == 1
    assert s["groups_crossing_labels"] == 0
    # per class: test images 1, 2 (twice each) have byte copies in train, image 3 (twice) a near copy
    assert s["source_test_files"] == 48
    assert s["source_test_with_exact_copy_in_train"] == 16
    assert s["source_test_with_copy_in_train"] == 24


def test_audit_writes_its_tables(audited):
    out = write_audit(audited, "kaggle-archive")
    assert {p.name for p in out.iterdir()} == {"per_class.csv", "per_class.md", "groups.csv", "summary.json"}
    assert "| MI | 26 | 18 | 17 |" in (out / "per_class.md").read_text()


# ---------------------------------------------------------------- splits
@pytest.mark.parametrize("protocol", ["paper", "grouped", "kaggle"])
def test_manifests_are_deterministic_and_complete(audited, protocol):
    a = make_manifest(audited.files, protocol, seed=3)
    b = make_manifest(audited.files, protocol, seed=3)
    assert a.to_csv(index=False) == b.to_csv(index=False)
    assert len(a) == len(audited.files) and a["path"].is_unique
    assert set(a["subset"]) == {"train", "val", "test"}
    for subset in ("train", "test"):
        assert set(a.loc[a["subset"] == subset, "label"]) == set(CLASS_CODES)
    if protocol != "kaggle":
        assert make_manifest(audited.files, protocol, seed=4).to_csv() != a.to_csv()


def test_grouped_never_splits_a_duplicate_group_and_paper_does(audited):
    grouped = make_manifest(audited.files, "grouped", seed=0)
    assert (grouped.groupby("group")["subset"].nunique() == 1).all()
    assert grouped["copy_in_train"].sum() == 0
    leaks = [make_manifest(audited.files, "paper", seed=s)["copy_in_train"].sum() for s in range(3)]
    assert min(leaks) > 0  # random splits put copies of training images in val/test
    # 20 folds of groups, 14 / 3 / 3: each subset's share of the groups is within one fold of 70/15/15
    groups = grouped.drop_duplicates("group")["subset"].value_counts(normalize=True)
    for subset, target in SPLIT_FRACTIONS.items():
        assert abs(groups[subset] - target) <= 0.05, (subset, groups.to_dict())


def test_kaggle_protocol_keeps_the_archive_test_folder(audited):
    man = make_manifest(audited.files, "kaggle", seed=0)
    files = audited.files.set_index("path")
    test_paths = set(man.loc[man["subset"] == "test", "path"])
    assert test_paths == set(files.index[files["source_split"] == "test"])
    summary = splits_mod.manifest_summary(man, "kaggle", 0, "")
    assert summary["test_with_copy_in_train"] > 0  # the archive's own leakage is reported


def test_kaggle_protocol_without_folders_says_what_to_use(real_like_tree):
    inv = build_inventory(discover(real_like_tree, copy="ecg_data_new_version/ecg data new version"),
                          workers=1, progress=False)
    # 3 files per class: too few for a grouped split, but the kaggle error must come first
    with pytest.raises(UserError, match="protocol paper or grouped"):
        make_manifest(run_audit(inv).files, "kaggle")


# ---------------------------------------------------------------- preprocessing
def _page(w=442, h=314):
    """A page with black header/footer bands and a red grid area (docs/design_notes.md, page geometry)."""
    arr = np.full((h, w, 3), 255, np.uint8)
    l, t, r, b = crop_box(w, h)
    arr[:t] = 0
    arr[b:] = 0
    arr[t:b, l:r] = (255, 0, 0)
    return Image.fromarray(arr)


def test_crop_drops_the_text_bands(tmp_path):
    p = tmp_path / "page.jpg"
    _page().save(p, quality=95)
    full = load_image(p, PreprocessSettings(64, "resize", crop=False)).astype(int)
    crop = load_image(p, PreprocessSettings(64, "resize", crop=True)).astype(int)
    assert full.shape == crop.shape == (64, 64, 3)
    assert full[:3].mean() < 40  # header band is there without crop ...
    assert crop[2:-2, 2:-2, 0].mean() > 200 and crop[2:-2, 2:-2, 1].mean() < 60  # ... and gone with it


def test_letterbox_keeps_the_aspect_ratio(tmp_path):
    p = tmp_path / "page.png"
    Image.new("RGB", (400, 200), (0, 0, 0)).save(p)
    out = load_image(p, PreprocessSettings(64, "letterbox"))
    assert out[:10].min() == 255 and out[-10:].min() == 255  # white padding top and bottom
    assert out[20:44].max() == 0  # the page itself in the middle


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P", "F"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (60, 40), (200, 30, 30)).convert(mode)
    p = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16", "F") else "x.png")
    img.save(p)
    out = load_image(p, PreprocessSettings(32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.max() > 20  # the picture survived the conversion (not all black)


def test_cache_decodes_each_distinct_image_once_and_is_reused(real_like_tree):
    d = discover(real_like_tree)
    inv = build_inventory(d, workers=2, progress=False)
    settings = PreprocessSettings(32, "resize", crop=False)
    cache = build_cache(inv, real_like_tree, "arch", settings, workers=2, progress=False)
    imgs = cache.images()
    assert imgs.shape == (inv.loc[inv["readable"], "sha256"].nunique(), 32, 32, 3)
    assert len(cache.index) == 104 and imgs.dtype == np.uint8
    # byte copies share a row; the row holds the right picture
    row = cache.rows_for([cache.index["path"][0]])[0]
    expect = load_image(real_like_tree / cache.index["path"][0], settings)
    np.testing.assert_array_equal(imgs[row], expect)
    mtime = cache.array_path.stat().st_mtime_ns
    again = build_cache(inv, real_like_tree, "arch", settings, workers=2, progress=False)
    assert again.array_path == cache.array_path and again.array_path.stat().st_mtime_ns == mtime
    cropped = build_cache(inv, real_like_tree, "arch", PreprocessSettings(32, "resize", crop=True),
                          workers=1, progress=False)
    assert cropped.array_path != cache.array_path


# ---------------------------------------------------------------- whole stage
def test_prepare_data_on_a_given_root_writes_every_output(real_like_tree, project_root):
    prepared = prepare_data(real_like_tree, profile="smoke", workers=2, progress=False, log=lambda *_: None)
    assert prepared.dataset == "kaggle-archive" and not prepared.is_synthetic
    assert set(prepared.manifests) == {"paper", "grouped", "kaggle"}
    for p in prepared.outputs.values():
        assert p.exists() and str(p).startswith(str(project_root))
    assert prepared.cache.images().shape[1:] == (64, 64, 3)


def test_inventory_made_with_another_hash_method_is_not_reused(real_like_tree):
    import json as _json

    from ecgpaper.data.inventory import inventory_path, previous_inventory

    d = discover(real_like_tree)
    write_inventory(build_inventory(d, workers=1, progress=False), "arch", d)
    assert previous_inventory("arch") is not None
    info = inventory_path("arch").with_suffix(".json")
    meta = _json.loads(info.read_text())
    meta["phash_method"] = "phash8-wholepage"
    info.write_text(_json.dumps(meta))
    assert previous_inventory("arch") is None


def _files(sizes, per_group=3):
    """Files of four classes of the given sizes, in groups of ``per_group`` copies."""
    return pd.DataFrame([{"path": f"{c}/{i:04d}.jpg", "label": c, "group": f"{c}{i // per_group}",
                          "source_split": ""}
                         for c, n in zip(CLASS_CODES, sizes) for i in range(n)])


@pytest.mark.parametrize("seed", range(4))
def test_paper_split_is_70_15_15_within_one_image_per_class(seed, audited):
    # the real archive's class sizes (3.1: 240, 172, 233, 284 ECGs x 12 / 12 per folder), and the fixture
    for files in (_files((240, 172, 233, 284)), audited.files):
        man = make_manifest(files, "paper", seed=seed)
        counts = man.groupby(["label", "subset"]).size().unstack(fill_value=0)
        for code in CLASS_CODES:
            n = counts.loc[code].sum()
            for subset, fraction in SPLIT_FRACTIONS.items():
                assert abs(counts.loc[code, subset] - fraction * n) <= 1, (code, subset, counts.loc[code].to_dict())


def test_grouped_split_is_70_15_15_of_the_files_within_two_points():
    for seed in range(3):
        man = make_manifest(_files((240, 172, 233, 284)), "grouped", seed=seed)
        share = man["subset"].value_counts(normalize=True)
        for subset, target in SPLIT_FRACTIONS.items():
            assert abs(share[subset] - target) <= 0.02, (seed, share.to_dict())
        assert (man.groupby("group")["subset"].nunique() == 1).all()


def _hex(bits_set) -> str:
    import imagehash

    bits = np.zeros(256, bool)
    bits[list(bits_set)] = True
    return str(imagehash.ImageHash(bits.reshape(16, 16)))


def _phash_files():
    """A ~ B (15 bits), B ~ C (15 bits), A !~ C (30 bits), D far from all; A2: a
    byte copy of A filed under another class."""
    return pd.DataFrame({
        "path": ["a.jpg", "a2.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "label": ["MI", "HMI", "MI", "MI", "NORM"],
        "sha256": ["sa", "sa", "sb", "sc", "sd"],
        "phash": [_hex([]), _hex([]), _hex(range(15)), _hex(range(30)), _hex(range(100, 200))],
        "readable": True, "source_split": "",
    })


def test_a_chain_of_near_duplicates_lands_in_one_group():
    from ecgpaper.data.audit import assign_groups

    files = assign_groups(_phash_files(), threshold=20).set_index("path")
    assert files.loc["a.jpg", "group"] == files.loc["b.jpg", "group"] == files.loc["c.jpg", "group"]
    assert files.loc["a.jpg", "group"] == files.loc["a2.jpg", "group"] != files.loc["d.jpg", "group"]
    assert files.loc["c.jpg", "group_size"] == 4
    # with threshold 14 the links (15 bits) break: the chain falls apart
    files = assign_groups(_phash_files(), threshold=14).set_index("path")
    assert files["group"].nunique() == 4 and files.loc["a.jpg", "group"] == files.loc["a2.jpg", "group"]


def test_threshold_check_shows_the_histogram_largest_group_and_label_crossings(project_root):
    from ecgpaper.data.audit import phash_distance_counts, run_audit, write_threshold_check

    audit = run_audit(_phash_files(), threshold=20)
    counts = phash_distance_counts(audit.files).set_index("distance")
    # distinct contents a, b, c (MI) and d (NORM): a-b 15, b-c 15, a-c 30 same class; d-x different
    assert counts["same_class"].sum() == 3 and counts.loc[15, "same_class"] == 2 and counts.loc[30, "same_class"] == 1
    assert counts["different_class"].sum() == 3
    assert counts.loc[100, "different_class"] == 1 and counts.loc[115, "different_class"] == 1  # d-a, d-b
    check = write_threshold_check(audit, Workspace("synthetic-chain", "smoke"))
    assert check["largest_group_files"] == 4 and check["groups_crossing_labels"] == 1
    assert check["pairs_at_or_below"] == 2 and check["nearest_above"] == 30
    groups = check["groups"]
    assert len(groups) == 1 and groups.iloc[0]["why"] == "largest group; crosses labels"
    assert groups.iloc[0]["classes"] == "HMI, MI" and groups.iloc[0]["distinct_contents"] == 3
    bins = check["bins"].set_index("distance")
    assert bins.loc["11-15", "pairs_same_class"] == 2 and bins.loc["11-15", "same_ecg_at_threshold"] == "yes"
    assert bins.loc["16-20", "same_ecg_at_threshold"] == "yes" and bins.loc["21-25", "same_ecg_at_threshold"] == "no"
    results = project_root / "results/synthetic-chain/smoke"
    assert "dataset synthetic-chain (SYNTHETIC" in (results / "table_audit_groups.md").read_text()
    assert (project_root / "figures/synthetic-chain/smoke/fig_audit_phash_distances.png").stat().st_size > 1000


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "L", "RGB"])
def test_large_images_are_reduced_before_conversion_with_the_same_picture(tmp_path, mode):
    """decode_reduced shrinks a 1600 x 1200 page right after decoding (by 9 for a 64 px
    input: at least twice the input size is kept); the result matches converting the
    full page first, then resizing."""
    from ecgpaper.data.preprocess import decode_reduced

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # big flat patches of colour
    page = Image.fromarray(blocks).resize((1600, 1200), Image.Resampling.NEAREST)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(page.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        img = page.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = page.convert(mode)
    p = tmp_path / "page.png"
    img.save(p)
    settings = PreprocessSettings(64)
    with Image.open(p) as opened:
        reduced = decode_reduced(opened, settings)
        assert reduced.height in (1200 // 9, 1200 // 9 + 1) and reduced.height >= 2 * 64
        assert reduced.width in (1600 // 9, 1600 // 9 + 1)
        assert reduced.mode == ("RGB" if mode == "P" else mode)  # no conversion yet (palettes aside)
    out = load_image(p, settings).astype(int)
    if mode == "I;16":  # the full-size way: scaled to 8 bits by the brightest pixel
        grey = np.asarray(img, dtype=np.float64)
        reference = Image.fromarray((grey * (255.0 / grey.max())).astype(np.uint8), "L")
    else:
        reference = img
    full_first = reference.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=2.0)
    diff = np.abs(out - np.asarray(full_first, int))
    # the same picture: equal inside the flat patches, off only along the patches' sharp edges
    assert np.median(diff) <= 1 and diff.mean() < 4, (np.median(diff), diff.mean())
