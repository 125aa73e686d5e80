"""One training run in a fresh process (started by :mod:`ecgpaper.runs.engine`).

``python -m ecgpaper.runs.worker --parent PID`` imports TensorFlow, then reads
one job (JSON on stdin: the run's config, its spilled data folder, the GPU it
is pinned to), trains it with :func:`ecgpaper.runs.training.train_run` and
exits: every byte of host and GPU memory the run used goes back to the system.
It dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread
elsewhere), so a killed notebook or CLI leaves no orphan training.
Exit status: 0 finished, 3 bad input (a ``UserError``, message printed), 1 crash.

``ray_task`` is the same for a Ray worker (``max_calls=1``: one run per process).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import threading
import time
import traceback


def _die_with_parent(parent: int) -> None:
    try:  # Linux: the kernel sends SIGKILL when the parent dies
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except OSError:
        pass

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(137)
            time.sleep(2)

    threading.Thread(target=watch, daemon=True).start()


def run_job(job: dict, executor: dict) -> str:
    """Train the job's run; returns its run id."""
    if job.get("gpu") is not None:  # before TensorFlow touches a device
        os.environ["CUDA_VISIBLE_DEVICES"] = str(job["gpu"])
    from ecgpaper.runs.runconfig import RunConfig
    from ecgpaper.runs.spill import load_spilled
    from ecgpaper.runs.training import train_run

    config = RunConfig(**job["config"])
    data = load_spilled(job["data"])
    run = train_run(config, data, verbose=job.get("verbose", 0),
                    executor={**executor, "gpu": job.get("gpu")})
    if run.run_id != job["run_id"]:
        raise RuntimeError(f"trained {run.run_id}, expected {job['run_id']}: the data changed")
    return run.run_id


class _Tee:
    """A Ray worker's output into the run's log file as well as Ray's."""

    def __init__(self, stream, path: str):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8", buffering=1)

    def write(self, text):
        self.file.write(text)
        return self.stream.write(text)

    def flush(self):
        self.file.flush()
        self.stream.flush()

    def isatty(self):
        return False


def ray_task(job: dict) -> str:
    """A run as a Ray task (engine._RayBackend); its output also goes to the run's log."""
    import ray

    os.environ["ECGPAPER_PROGRESS"] = "lines"
    log_path = job.get("log_path")
    if log_path:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        open(log_path, "w").close()
        sys.stdout, sys.stderr = _Tee(sys.stdout, log_path), _Tee(sys.stderr, log_path)
    ctx = ray.get_runtime_context()
    gpu_ids = ray.get_gpu_ids()
    executor = {"kind": "ray", "host": socket.gethostname(), "pid": os.getpid(),
                "ray_node": ctx.get_node_id(), "ray_gpus": [str(g) for g in gpu_ids]}
    return run_job({**job, "gpu": None}, executor)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecgpaper.runs.worker")
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    # the slow part first, while the parent may still be choosing the job
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    from ecgpaper.errors import UserError

    line = sys.stdin.readline()
    if not line.strip():
        return 0  # a spare worker that was not needed
    job = json.loads(line)
    executor = {"kind": "process", "host": socket.gethostname(), "pid": os.getpid()}
    gpu = job.get("gpu")
    print(f"worker pid {os.getpid()} on {executor['host']}, "
          f"{'GPU ' + str(gpu) if gpu is not None else 'no GPU pinned'}", flush=True)
    try:
        run_job(job, executor)
    except UserError as exc:
        print(f"error: {exc}", flush=True)
        return 3
    except Exception:  # noqa: BLE001 (reported to the parent through the log)
        traceback.print_exc(file=sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
