"""Every training run in its own process, several at once, on one machine's GPUs
or on a Ray cluster (paper 3.5, 4, 5.4: the grid, the five runs and the studies
are independent trainings; docs/runs_engine.md).

``experiments.run_configs`` hands the runs that have not finished to
:func:`train_in_processes`, which

- spills each run's arrays once to ``data/cache/run-data/<digest>/`` (``.npy``,
  read back memory-mapped by the child);
- claims each run id with a file created exclusively (:class:`Claim`: host, pid,
  heartbeat) so that no two schedulers, on one host or several sharing the
  project root, ever train the same run; a dead owner's claim is taken over;
- starts ``python -m ecgpaper.runs.worker`` per run (a fresh interpreter: never a
  ``fork`` of a process where TensorFlow started), ``--jobs`` at a time, each
  pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` when there are GPUs, or sends
  the run to Ray as a task asking for one GPU (or ``ECGPAPER_RAY_CPUS_PER_RUN``
  CPUs) with ``--ray ADDRESS``;
- shows one progress line or bar over the runs, and the children's lines with
  their run id in front;
- contains failure: a child that dies, is killed or runs past
  ``ECGPAPER_RUN_TIMEOUT_S`` leaves no run folder (the child builds it under a
  temporary name), the other runs go on, and :class:`RunsFailed` names the
  failed runs with the reason and the tail of their log; a rerun retries them.

Settings (environment, so notebooks and ``./run_all.sh`` read the same as the CLI):
``ECGPAPER_JOBS`` (``--jobs``; default: one per visible GPU, else 1),
``ECGPAPER_RAY_ADDRESS`` (``--ray``), ``ECGPAPER_EXECUTOR`` (``process``, the
default, or ``inline``: every run in the calling process, as before; the unit
tests use it), ``ECGPAPER_RUN_TIMEOUT_S`` (per-run wall-time limit; none by default).

The scheduler is hand-written for one machine because ``multiprocessing`` and
``concurrent.futures`` pools reuse workers (TensorFlow's memory never goes back)
and cannot pin a GPU per task or kill one hung task; across machines Ray does
the scheduling.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ecgpaper import paths
from ecgpaper.errors import UserError
from ecgpaper.paths import Workspace
from ecgpaper.progress import progress_mode
from ecgpaper.runs.runconfig import RunConfig, RunData
from ecgpaper.runs.spill import spill_data
from ecgpaper.runs.store import finished_run_ids, runs_dir

JOBS_ENV = "ECGPAPER_JOBS"
RAY_ENV = "ECGPAPER_RAY_ADDRESS"
EXECUTOR_ENV = "ECGPAPER_EXECUTOR"
TIMEOUT_ENV = "ECGPAPER_RUN_TIMEOUT_S"
RAY_CPUS_ENV = "ECGPAPER_RAY_CPUS_PER_RUN"
EXECUTORS = ("process", "inline")

#: a claim whose heartbeat is older than this belongs to a dead scheduler
STALE_SECONDS = 90
HEARTBEAT_SECONDS = 10
#: lines of a failed run's log shown in the error
LOG_TAIL_LINES = 25


class RunsFailed(UserError):
    """Some runs of an experiment failed; the others finished and are kept."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        lines = [f"{len(failures)} run(s) failed (the finished ones are kept; rerun the same "
                 "command to retry the failed ones):"]
        lines += [f"- {run_id}: {reason}" for run_id, reason in failures.items()]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """The GPUs children may be pinned to: ``CUDA_VISIBLE_DEVICES`` when set, else
    ``nvidia-smi -L``'s. Asked without importing TensorFlow, which would grab
    device memory in the parent."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]


def default_jobs() -> int:
    """``ECGPAPER_JOBS`` if set, else one run per visible GPU, else 1 (a CPU: runs
    already use every core)."""
    given = os.environ.get(JOBS_ENV, "").strip()
    if given:
        try:
            jobs = int(given)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise UserError(f"{JOBS_ENV}={given!r}: give a whole number of runs at once, 1 or more")
        return jobs
    return max(1, len(visible_gpus()))


def executor_kind() -> str:
    """``ray`` when a Ray address is set, else ``ECGPAPER_EXECUTOR`` (``process`` by default)."""
    if os.environ.get(RAY_ENV, "").strip():
        return "ray"
    kind = os.environ.get(EXECUTOR_ENV, "").strip().lower() or "process"
    if kind not in EXECUTORS:
        raise UserError(f"{EXECUTOR_ENV}={kind!r}: choose one of {', '.join(EXECUTORS)}")
    return kind


def run_timeout() -> float | None:
    given = os.environ.get(TIMEOUT_ENV, "").strip()
    if not given:
        return None
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UserError(f"{TIMEOUT_ENV}={given!r}: give the per-run limit in seconds (> 0), or unset it")
    return seconds


# --------------------------------------------------------------------------
# claims: one trainer per run id, across processes and hosts
# --------------------------------------------------------------------------

def claims_dir(ws: Workspace) -> Path:
    """``results/<dataset>/<profile>/.claims/``: beside ``runs/``, which holds run folders only."""
    return ws.results / ".claims"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Claim:
    """``.claims/<run id>.json``, created with ``O_EXCL``: the owner (host, pid,
    token) trains the run; the file's mtime is its heartbeat."""
    path: Path
    token: str
    owner: dict = field(default_factory=dict)

    @classmethod
    def acquire(cls, ws: Workspace, run_id: str) -> Claim | None:
        """The claim, or None while a live owner holds it (a stale one is taken over)."""
        path = claims_dir(ws) / f"{run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _take_over_if_stale(path):
                    continue
                return None
            with os.fdopen(fd, "w") as fh:
                json.dump(owner, fh)
            return cls(path, owner["token"], owner)
        return None

    def beat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the claim if it is still ours."""
        if read_claim(self.path).get("token") == self.token:
            self.path.unlink(missing_ok=True)


def read_claim(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def claim_is_stale(path: Path) -> bool:
    """Its owner is gone: a dead pid on this host, or no heartbeat for ``STALE_SECONDS``."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = read_claim(path)
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if not _pid_alive(owner["pid"]):
            return True
    return age > STALE_SECONDS


def _take_over_if_stale(path: Path) -> bool:
    """Remove a stale claim under a takeover lock (so two schedulers never both take it)."""
    lock = path.with_name(".takeover")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a takeover lock left by a killed scheduler
            if time.time() - lock.stat().st_mtime > 30:
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        if claim_is_stale(path):
            path.unlink(missing_ok=True)
            return True
        return False
    finally:
        lock.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# executors
# --------------------------------------------------------------------------

def log_dir(ws: Workspace) -> Path:
    """``results/<dataset>/<profile>/logs/<run id>.log``: each run's own output."""
    return ws.results / "logs"


def _child_environment(gpu: str | None) -> dict:
    env = dict(os.environ)
    env["ECGPAPER_ROOT"] = str(paths.ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["ECGPAPER_PROGRESS"] = "lines"  # a pipe: one line per epoch, not a bar
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(RAY_ENV, None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


class LocalWorker:
    """``python -m ecgpaper.runs.worker``: imports TensorFlow, reads one job on stdin,
    trains it and exits. Started ahead of its job so that the import overlaps the
    run before; its output goes to the run's log and, line by line, to ``lines``."""

    def __init__(self, gpu: str | None, lines: queue.Queue):
        self.gpu, self.lines, self.run_id, self.log_path = gpu, lines, None, None
        self._log = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecgpaper.runs.worker", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=_child_environment(gpu), text=True, bufsize=1, start_new_session=True)
        self._early: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if self._log is None:
                self._early.append(line)
                continue
            self._log.write(line + "\n")
            self._log.flush()
            if line.startswith(("WARNING: All log messages before absl", "I0000 ")):
                continue  # TensorFlow's start-up chatter: in the log file only
            tag = f"[{self.run_id}]"
            self.lines.put(line if line.startswith(tag) else f"{tag} {line}")

    def start(self, job: dict, log_path: Path) -> None:
        self.run_id, self.log_path = job["run_id"], log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")
        log.writelines(line + "\n" for line in self._early)
        self._log = log
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died while importing: poll() reports it

    def poll(self) -> tuple[bool, str | None]:
        """(finished, failure reason or None)."""
        rc = self.proc.poll()
        if rc is None:
            return False, None
        self._reader.join(timeout=10)
        if self._log is not None:
            self._log.close()
        if rc == 0:
            return True, None
        if rc < 0:
            name = signal.Signals(-rc).name
            why = " (out of memory?)" if name == "SIGKILL" else ""
            return True, f"the worker was killed by {name}{why}"
        return True, f"the worker exited with status {rc}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class _LocalBackend:
    """``jobs`` workers at a time on this machine, each pinned to one GPU when there are
    any; on a CPU one spare worker imports TensorFlow ahead of the next run."""

    kind = "process"

    def __init__(self, jobs: int, lines: queue.Queue):
        self.jobs, self.lines = jobs, lines
        gpus = visible_gpus()
        self.free_gpus = deque(gpus[i % len(gpus)] for i in range(jobs)) if gpus else None
        self.spare: LocalWorker | None = None

    def capacity(self, running: int) -> int:
        return self.jobs - running

    def start(self, job: dict, log_path: Path):
        if self.free_gpus is not None:
            gpu = self.free_gpus.popleft()
            worker = LocalWorker(gpu, self.lines)
        else:
            worker = self.spare or LocalWorker(None, self.lines)
            self.spare = None
        job = {**job, "gpu": worker.gpu}
        worker.start(job, log_path)
        return worker

    def prestart(self, more_to_come: bool) -> None:
        if self.free_gpus is None and more_to_come and self.spare is None:
            self.spare = LocalWorker(None, self.lines)

    def poll(self, handle):
        return handle.poll()

    def finished(self, handle) -> None:
        if self.free_gpus is not None:
            self.free_gpus.append(handle.gpu)

    def kill(self, handle) -> None:
        handle.kill()

    def close(self) -> None:
        if self.spare is not None:
            self.spare.kill()


def _forwarded_environment() -> dict:
    keep = ("ECGPAPER_", "KERAS_HOME", "TF_")
    env = {k: v for k, v in os.environ.items() if k.startswith(keep) and k != RAY_ENV}
    env["ECGPAPER_ROOT"] = str(paths.ROOT)
    env["ECGPAPER_PROGRESS"] = "lines"
    return env


class _RayBackend:
    """Each run a Ray task on an existing cluster (``ray start --head`` / ``ray
    start --address``): one GPU per task when the cluster has GPUs, else
    ``ECGPAPER_RAY_CPUS_PER_RUN`` CPUs (default 1); ``max_calls=1`` gives every run
    a fresh worker process. The project root (``ECGPAPER_ROOT``) must be storage
    every node sees, with ecgpaper installed in the same environment on each."""

    kind = "ray"

    def __init__(self, address: str, log):
        try:
            import ray
        except ImportError as exc:
            raise UserError("--ray needs Ray: pip install 'ecgpaper[cluster]' (or pip install ray)") from exc
        self.ray = ray
        try:
            ray.init(address=address, runtime_env={"env_vars": _forwarded_environment()},
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"could not connect to the Ray cluster at {address!r}: {exc}. Start one "
                            "with `ray start --head` (README: More than one GPU or machine)") from exc
        from ecgpaper.runs.worker import ray_task

        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            options = {"num_gpus": 1}
            self.slots = int(resources["GPU"])
        else:
            cpus = float(os.environ.get(RAY_CPUS_ENV, "1"))
            options = {"num_cpus": cpus}
            self.slots = max(1, int(resources.get("CPU", 1) // cpus))
        self.task = ray.remote(max_calls=1, max_retries=0, **options)(ray_task)
        log(f"Ray cluster at {address}: {int(resources.get('CPU', 0))} CPUs, "
            f"{int(resources.get('GPU', 0))} GPUs; each run asks for {options}")

    def capacity(self, running: int) -> int:
        return self.slots - running  # Ray queues the rest anyway; claims are held only while queued

    def start(self, job: dict, log_path: Path):
        return self.task.remote({**job, "gpu": None, "log_path": str(log_path)})

    def prestart(self, more_to_come: bool) -> None:
        pass

    def poll(self, ref):
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return False, None
        try:
            self.ray.get(ref)
            return True, None
        except self.ray.exceptions.RayTaskError as exc:
            return True, f"the Ray task raised {str(exc).strip().splitlines()[-1][:300]}"
        except self.ray.exceptions.RayError as exc:
            return True, f"the Ray worker died ({type(exc).__name__})"

    def finished(self, ref) -> None:
        pass

    def kill(self, ref) -> None:
        self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()


# --------------------------------------------------------------------------
# progress over the runs
# --------------------------------------------------------------------------

def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunsProgress:
    """One bar (terminal, JupyterLab: ``tqdm.auto``) or one line per change (logs):
    done / running / failed over the runs, elapsed and ETA."""

    def __init__(self, name: str, total: int, log):
        self.name, self.total, self.log, self.t0 = name, total, log, time.perf_counter()
        self.mode = progress_mode()
        self.bar, self.last = None, None
        if self.mode == "bar" and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="run", leave=True)

    def update(self, done: int, running: int, failed: int) -> None:
        state = (done, running, failed)
        if state == self.last:
            return
        self.last = state
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - done - failed) if done else None
        text = (f"{done}/{self.total} done, {running} running, {failed} failed, "
                f"elapsed {_clock(elapsed)}, ETA {_clock(eta) if eta is not None else '?'}")
        if self.bar is not None:
            self.bar.n = done + failed
            self.bar.set_postfix_str(f"{running} running, {failed} failed")
        elif self.mode == "lines":
            self.log(f"[{self.name}] {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------
# the scheduler
# --------------------------------------------------------------------------

def _log_tail(path: Path | None, n: int = LOG_TAIL_LINES) -> str:
    if path is None or not Path(path).exists():
        return ""
    # TensorFlow's start-up lines (absl logs them whatever TF_CPP_MIN_LOG_LEVEL says) say nothing
    noise = ("WARNING: All log messages before absl", "I0000 ", "To enable the following instructions")
    lines = [line for line in Path(path).read_text(errors="replace").splitlines()
             if not line.startswith(noise)][-n:]
    return "\n    " + "\n    ".join(lines) if lines else ""


def train_in_processes(jobs: list[tuple[RunConfig, RunData]], *, name: str = "runs", verbose: int = 0,
                       log=print, n_jobs: int | None = None, ray_address: str | None = None) -> None:
    """Train every (config, data) pair not yet finished, each in its own process
    (or Ray task), ``n_jobs`` at a time; return when all are finished, trained
    here or by another scheduler. Raises :class:`RunsFailed` naming the runs that failed."""
    if not jobs:
        return
    ws = jobs[0][0].workspace
    ray_address = ray_address or os.environ.get(RAY_ENV, "").strip() or None
    limit = run_timeout()
    lines: queue.Queue = queue.Queue()
    backend = _RayBackend(ray_address, log) if ray_address else _LocalBackend(n_jobs or default_jobs(), lines)
    spilled: dict[int, Path] = {}
    pending = deque((c.run_id(d.manifest_sha), c, d) for c, d in jobs)
    total = len(pending)
    waiting: dict[str, tuple] = {}  # claimed by another scheduler: wait for it
    running: dict[str, tuple] = {}  # run id -> (handle, claim, started, log path)
    failures: dict[str, str] = {}
    done = 0
    progress = RunsProgress(name, total, log)
    last_beat = time.monotonic()
    try:
        while pending or running or waiting:
            finished = None
            while pending and backend.capacity(len(running)) > 0:
                run_id, config, data = pending.popleft()
                finished = finished_run_ids(ws) if finished is None else finished
                if run_id in finished:
                    done += 1
                    continue
                claim = Claim.acquire(ws, run_id)
                if claim is None:
                    owner = read_claim(claims_dir(ws) / f"{run_id}.json")
                    log(f"[{name}] {run_id}: being trained by {owner.get('host', '?')} pid "
                        f"{owner.get('pid', '?')}; waiting for it")
                    waiting[run_id] = (run_id, config, data)
                    continue
                if run_id in finished_run_ids(ws):  # finished between the check and the claim
                    claim.release()
                    done += 1
                    continue
                if id(data) not in spilled:
                    spilled[id(data)] = spill_data(data)
                log_path = log_dir(ws) / f"{run_id}.log"
                job = {"run_id": run_id, "config": config.to_dict(), "data": str(spilled[id(data)]),
                       "verbose": verbose, "root": str(paths.ROOT)}
                log(f"[{name} {done + len(running) + len(failures) + 1}/{total}] training {run_id} "
                    f"({backend.kind}; log {log_path})")
                running[run_id] = (backend.start(job, log_path), claim, time.monotonic(), log_path)
            backend.prestart(bool(pending))
            while True:
                try:
                    log(lines.get_nowait())
                except queue.Empty:
                    break
            for run_id, (handle, claim, started, log_path) in list(running.items()):
                over = limit is not None and time.monotonic() - started > limit
                if over:
                    backend.kill(handle)
                ended, reason = backend.poll(handle)
                if not ended:
                    continue
                del running[run_id]
                backend.finished(handle)
                if over:
                    reason = f"over the per-run time limit of {limit:g} s ({TIMEOUT_ENV})"
                if reason is None and run_id not in finished_run_ids(ws):  # read after its exit
                    reason = "the worker exited without writing the run"
                if reason is None:
                    done += 1
                else:
                    shutil.rmtree(runs_dir(ws) / f".{run_id}.partial", ignore_errors=True)
                    failures[run_id] = reason + _log_tail(log_path)
                    log(f"[{name}] {run_id} FAILED: {reason} (log {log_path})")
                claim.release()
            if waiting:  # the registry once per poll, not once per waiting run
                finished = finished_run_ids(ws)
            for run_id in list(waiting):
                if run_id in finished:
                    del waiting[run_id]
                    done += 1
                elif not (claims_dir(ws) / f"{run_id}.json").exists() or \
                        claim_is_stale(claims_dir(ws) / f"{run_id}.json"):
                    pending.append(waiting.pop(run_id))  # its owner failed or died: ours to train
            if time.monotonic() - last_beat > HEARTBEAT_SECONDS:
                for _, claim, _, _ in running.values():
                    claim.beat()
                last_beat = time.monotonic()
            progress.update(done, len(running), len(failures))
            if running or waiting:
                time.sleep(0.5)
    finally:
        for handle, claim, _, _ in running.values():
            backend.kill(handle)
            claim.release()
        for run_id in running:
            shutil.rmtree(runs_dir(ws) / f".{run_id}.partial", ignore_errors=True)
        while True:
            try:
                log(lines.get_nowait())
            except queue.Empty:
                break
        backend.close()
        progress.close()
    if failures:
        raise RunsFailed(failures)


# --------------------------------------------------------------------------
# the studies' model work (Grad-CAM, corrupted inputs, latency) in a child too
# --------------------------------------------------------------------------

def in_fresh_process(fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh interpreter (``spawn``), its result pickled
    back: the studies that load saved models into TensorFlow (Grad-CAM, robustness,
    latency) run there, so a notebook kernel never holds their memory (TensorFlow
    does not hand it back; issue 20: the quick notebook-06 kernel peaked at 3.4 GB
    when they ran in it). ``fn`` and its arguments must pickle (module-level
    functions, arrays, runs, dicts). Inline (``ECGPAPER_EXECUTOR=inline``, the unit
    tests): called here. A child that dies raises :class:`UserError` with the reason.

    A one-task ``concurrent.futures`` pool is enough here: unlike training, nothing
    needs a GPU pinned, a claim or a time limit, and the pool's one worker exits with it.
    """
    if executor_kind() == "inline":
        return fn(*args, **kwargs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    name = getattr(fn, "__qualname__", repr(fn))
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool as exc:
            raise UserError(f"the child process running {name} died ({exc}); if it ran out of memory, "
                            "free memory or run it on a larger machine, then rerun the cell") from None
