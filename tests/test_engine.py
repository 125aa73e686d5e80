"""The runs engine (ecgpaper.runs.engine): a process per run, claims, parallel
registry appends, failures contained and retried, a local Ray cluster.

The CLI tests run the real smoke pipeline in subprocesses (a process per run,
the default outside the unit tests) in one project root per test."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgpaper import paths
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace
from ecgpaper.runs import engine
from ecgpaper.runs.store import append_record, registry_path

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# claims, appends, settings (fast)
# --------------------------------------------------------------------------

def test_a_run_id_is_claimed_once_and_a_dead_owners_claim_is_taken_over(tmp_path):
    ws = Workspace("synthetic-smoke", "smoke")
    first = engine.Claim.acquire(ws, "run-a")
    assert first is not None and first.owner["pid"] == os.getpid()
    assert engine.Claim.acquire(ws, "run-a") is None  # we are alive: not stale
    first.release()
    assert not first.path.exists()

    # a claim of a process that has exited, on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = engine.claims_dir(ws) / "run-b.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "theirs"}))
    assert engine.claim_is_stale(path)
    taken = engine.Claim.acquire(ws, "run-b")
    assert taken is not None and engine.read_claim(path)["token"] == taken.token

    # another host's claim: stale only when its heartbeat is old
    other = engine.claims_dir(ws) / "run-c.json"
    other.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs"}))
    assert engine.Claim.acquire(ws, "run-c") is None
    old = time.time() - engine.STALE_SECONDS - 5
    os.utime(other, (old, old))
    assert engine.Claim.acquire(ws, "run-c") is not None

    # releasing a claim someone else has since taken leaves theirs alone
    mine = engine.Claim.acquire(ws, "run-d")
    mine.path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs"}))
    mine.release()
    assert mine.path.exists()


def _append_many(root: str, writer: int, n: int) -> None:
    paths.RESULTS = Path(root) / "results"
    ws = Workspace("synthetic-smoke", "smoke")
    for i in range(n):
        append_record(ws, {"run_id": f"w{writer}-{i}", "pad": "x" * 5000})


def test_parallel_appends_lose_or_tear_no_record(tmp_path):
    """Six processes appending 200 records of 5 KB each at once (runs finishing together)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(paths.ROOT), w, 200)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    text = registry_path(Workspace("synthetic-smoke", "smoke")).read_text()
    lines = text.split("\n")
    assert lines[-1] == "" and all(lines[:-1]), "a blank or torn line"
    ids = [json.loads(line)["run_id"] for line in lines[:-1]]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(6) for i in range(200))


def test_jobs_default_to_one_per_visible_gpu_and_one_on_a_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert engine.visible_gpus() == ["0", "1", "3"] and engine.default_jobs() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert engine.default_jobs() == 1
    monkeypatch.setenv("ECGPAPER_JOBS", "2")
    assert engine.default_jobs() == 2
    monkeypatch.setenv("ECGPAPER_JOBS", "0")
    with pytest.raises(UserError, match="ECGPAPER_JOBS"):
        engine.default_jobs()
    monkeypatch.setenv("ECGPAPER_EXECUTOR", "threads")
    with pytest.raises(UserError, match="process, inline"):
        engine.executor_kind()


def _exit_now(code: int) -> None:
    os._exit(code)


def test_study_work_runs_in_a_fresh_process_and_a_dead_child_is_a_clear_error(monkeypatch):
    """engine.in_fresh_process: the studies' model work (Grad-CAM, robustness, latency)
    leaves the notebook kernel's memory alone; inline (the unit tests) it runs here."""
    monkeypatch.setenv("ECGPAPER_EXECUTOR", "process")
    child = engine.in_fresh_process(os.getpid)
    assert child != os.getpid()
    assert engine.in_fresh_process(divmod, 7, 2) == (3, 1)
    with pytest.raises(UserError, match="_exit_now died"):
        engine.in_fresh_process(_exit_now, 3)
    monkeypatch.setenv("ECGPAPER_EXECUTOR", "inline")
    assert engine.in_fresh_process(os.getpid) == os.getpid()


# --------------------------------------------------------------------------
# the real pipeline through the CLI, a process per run (slow)
# --------------------------------------------------------------------------

def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"ECGPAPER_ROOT": str(paths.ROOT), "ECGPAPER_EXECUTOR": "process",
                "ECGPAPER_PROGRESS": "lines", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _cli(*args, **env):
    return subprocess.Popen([sys.executable, "-m", "ecgpaper", *args], cwd=REPO, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def _records() -> list[dict]:
    p = registry_path(Workspace("synthetic-smoke", "smoke"))
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _runs_dir() -> Path:
    return Workspace("synthetic-smoke", "smoke").results / "runs"


def _prepare() -> None:
    out = subprocess.run([sys.executable, "-m", "ecgpaper", "prepare", "--profile", "smoke"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def _worker_pid(log: Path, timeout=300) -> int:
    """The pid a worker prints when it gets its job (runs/worker.py)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists():
            for line in log.read_text().splitlines():
                if line.startswith("worker pid "):
                    return int(line.split()[2])
        time.sleep(0.2)
    raise AssertionError(f"no worker started ({log})")


@pytest.mark.slow
def test_two_concurrent_grid_commands_train_each_run_exactly_once():
    _prepare()
    a = _cli("run", "grid", "--profile", "smoke", "--no-export")
    time.sleep(2)
    b = _cli("run", "grid", "--profile", "smoke", "--no-export")
    out_a, out_b = _finish(a), _finish(b)
    assert a.returncode == 0, out_a[-3000:]
    assert b.returncode == 0, out_b[-3000:]
    ids = [r["run_id"] for r in _records()]
    assert len(ids) == 6 and len(set(ids)) == 6, ids  # six runs, each trained once
    trained_by = {r["run_id"]: r["executor"]["pid"] for r in _records()}
    assert len(set(trained_by.values())) == 6  # each in its own process
    # both commands report all six (the second waited for the first's runs)
    for out in (out_a, out_b):
        assert sum(line.split()[0] in trained_by for line in out.splitlines() if line.strip()) >= 6
    assert not list(engine.claims_dir(Workspace("synthetic-smoke", "smoke")).glob("*.json"))


@pytest.mark.slow
def test_a_killed_worker_is_a_failed_run_that_a_rerun_retries():
    _prepare()
    proc = _cli("run", "baseline", "--profile", "smoke", "--no-export")
    logs = engine.log_dir(Workspace("synthetic-smoke", "smoke"))
    first_log = None
    t0 = time.time()
    while first_log is None and time.time() - t0 < 300:
        first_log = next(iter(sorted(logs.glob("vgg16-*.log"))), None) if logs.exists() else None
        time.sleep(0.2)
    assert first_log is not None, "the VGG16 run never started"
    os.kill(_worker_pid(first_log), signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode == 2, out[-3000:]
    assert "1 run(s) failed" in out and "killed by SIGKILL" in out, out[-3000:]
    failed = first_log.stem
    assert f"- {failed}:" in out  # named, with its log's tail
    # the other run went on and finished; the killed one left nothing behind
    finished = [r["run_id"] for r in _records()]
    assert len(finished) == 1 and finished[0] != failed and finished[0].startswith("resnet50-")
    assert not (_runs_dir() / failed).exists() and not list(_runs_dir().glob(".*.partial"))
    assert not list(engine.claims_dir(Workspace("synthetic-smoke", "smoke")).glob("*.json"))
    # a rerun trains only the failed run
    again = _cli("run", "baseline", "--profile", "smoke", "--no-export")
    out = _finish(again)
    assert again.returncode == 0, out[-3000:]
    assert f"{_other(failed)}: already done, skipped" in out
    assert sorted(r["run_id"] for r in _records()) == sorted([failed, _other(failed)])


def _other(failed: str) -> str | None:
    others = [r["run_id"] for r in _records() if r["run_id"] != failed]
    return others[0] if others else None


@pytest.mark.slow
def test_a_run_over_its_time_limit_fails_and_a_killed_parent_leaves_no_orphan():
    _prepare()
    out = subprocess.run([sys.executable, "-m", "ecgpaper", "run", "baseline", "--profile", "smoke",
                          "--no-export"], cwd=REPO, env=_env(ECGPAPER_RUN_TIMEOUT_S="2"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.count("over the per-run time limit of 2 s") == 2, out.stderr[-2000:]
    assert _records() == [] and not list(_runs_dir().glob(".*.partial"))

    proc = _cli("run", "baseline", "--profile", "smoke", "--no-export")
    log = None
    while log is None and proc.poll() is None:
        logs = engine.log_dir(Workspace("synthetic-smoke", "smoke"))
        log = next(iter(logs.glob("*.log")), None) if logs.exists() else None
        time.sleep(0.2)
    pid = _worker_pid(log)
    proc.kill()
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 15 and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), "the worker outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------
# a Ray cluster on loopback
# --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_runs_go_to_a_local_ray_cluster(tmp_path):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    env = _env(RAY_USAGE_STATS_ENABLED="0")
    start = subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1",
                            "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
                            "--include-dashboard", "false", "--disable-usage-stats",
                            "--temp-dir", str(temp)], env=env, capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    try:
        _prepare()
        proc = _cli("run", "baseline", "--profile", "smoke", "--no-export", "--ray", f"127.0.0.1:{port}",
                    RAY_USAGE_STATS_ENABLED="0")
        out = _finish(proc)
        assert proc.returncode == 0, out[-4000:]
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
    records = _records()
    assert len(records) == 2
    executors = [r["executor"] for r in records]
    assert all(e["kind"] == "ray" and e["ray_node"] for e in executors), executors
    assert len({e["pid"] for e in executors}) == 2 and os.getpid() not in {e["pid"] for e in executors}
    for r in records:  # each Ray task's output is in the run's log
        log = (engine.log_dir(Workspace("synthetic-smoke", "smoke")) / f"{r['run_id']}.log").read_text()
        assert "train accuracy" in log and "test accuracy" in log
    assert all(r["metrics"]["accuracy"] > 0.25 for r in records)  # above chance: they learned


def test_spilled_run_data_is_memory_mapped_and_not_hashed_twice(tmp_path, monkeypatch):
    """A run's data goes to its worker through data/cache/run-data/<digest> (runs.spill):
    read back memory-mapped, equal to what was spilled; spilling data that was read back
    returns its folder without hashing the images again; other data gets another folder."""
    import numpy as np

    from ecgpaper.runs import spill
    from ecgpaper.runs.runconfig import RunData

    from conftest import point_paths

    point_paths(monkeypatch, tmp_path)
    rng = np.random.default_rng(0)

    def subset(n):
        return rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, n), list(range(n))

    data = RunData(train=subset(6), val=subset(3), test=subset(3), manifest_sha="abc", extra={"crop": False})
    folder = spill.spill_data(data)
    assert folder.parent == tmp_path / "data" / "cache" / "run-data"
    back = spill.load_spilled(folder)
    assert isinstance(back.train[0], np.memmap)
    for name in spill.SUBSETS:
        np.testing.assert_array_equal(getattr(back, name)[0], getattr(data, name)[0])
        np.testing.assert_array_equal(getattr(back, name)[1], getattr(data, name)[1])
    assert (back.manifest_sha, back.extra, back.test[2]) == ("abc", {"crop": False}, [0, 1, 2])

    def no_hashing(_):
        raise AssertionError("the images were hashed again")

    monkeypatch.setattr(spill, "data_digest", no_hashing)
    assert spill.spill_data(back) == folder
    monkeypatch.undo()
    point_paths(monkeypatch, tmp_path)
    other = RunData(train=subset(6), val=subset(3), test=subset(3), manifest_sha="abc", extra={"crop": False})
    assert spill.spill_data(other) != folder
