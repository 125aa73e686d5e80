"""The command line as a user runs it: ``python -m ecgpaper ...`` in a fresh project root."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

COMMANDS = ["download", "synth", "inventory", "audit", "split", "cache", "prepare", "run", "export",
            "notebooks", "serve", "lab", "clean", "reference-run"]


def ecgpaper(root, *args, timeout=600):
    env = {**os.environ, "ECGPAPER_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "ecgpaper", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(tmp_path, command):
    res = ecgpaper(tmp_path, command, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: python -m ecgpaper " + command in res.stdout
    if command not in ("download", "synth", "serve", "lab", "clean"):
        assert "--data-root" in res.stdout


def test_data_commands_without_data_say_what_to_do(tmp_path):
    res = ecgpaper(tmp_path, "inventory", "--profile", "smoke")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "ecgpaper synth" in res.stderr and "--data-root" in res.stderr


def test_prepare_on_the_smoke_twin_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        res = ecgpaper(root, "prepare", "--profile", "smoke", "--quiet")
        assert res.returncode == 0, res.stderr
        assert "SYNTHETIC twin" in res.stdout
    for protocol in ("paper", "grouped", "kaggle"):
        rel = f"results/synthetic-smoke/splits/{protocol}_seed0.csv"
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), protocol
    summary = json.loads((a / "results/synthetic-smoke/audit/summary.json").read_text())
    marker = json.loads((a / "data/raw/synthetic-smoke/SYNTHETIC_TWIN.json").read_text())
    # the audit finds exactly the duplicate groups the twin planted
    assert summary["distinct_groups"] == sum(marker["distinct"].values())
    assert summary["n_unreadable"] == len(marker["corrupt"])
    grouped = pd.read_csv(a / "results/synthetic-smoke/splits/grouped_seed0.csv")
    paper = pd.read_csv(a / "results/synthetic-smoke/splits/paper_seed0.csv")
    assert (grouped.groupby("group")["subset"].nunique() == 1).all()
    assert paper["copy_in_train"].sum() > 0
    assert list((a / "data/cache/synthetic-smoke").glob("64px_resize_full_*.npy"))


def test_single_stage_commands_and_options(tmp_path):
    assert ecgpaper(tmp_path, "synth", "--profile", "smoke", "--quiet").returncode == 0
    res = ecgpaper(tmp_path, "inventory", "--profile", "smoke", "--quiet")
    assert res.returncode == 0 and "unreadable:" in res.stdout
    res = ecgpaper(tmp_path, "audit", "--profile", "smoke", "--quiet")
    assert res.returncode == 0 and "| MI |" in res.stdout
    res = ecgpaper(tmp_path, "split", "--profile", "smoke", "--protocol", "grouped", "--seed", "7", "--quiet")
    assert res.returncode == 0 and (tmp_path / "results/synthetic-smoke/splits/grouped_seed7.csv").exists()
    res = ecgpaper(tmp_path, "cache", "--profile", "smoke", "--size", "48", "--crop", "--fit", "letterbox", "--quiet")
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "data/cache/synthetic-smoke").glob("48px_letterbox_crop_*.npy"))
