"""Speed of the web service (paper section 3.4: "near real time"): end-to-end
latency of one upload against the bare forward pass, and behaviour under load.

    python benchmarks/bench_serve.py [--build-vgg16] [--models-dir DIR] [--requests 30]
                                     [--clients 8] [--seconds 30] [--workers 2] [--memory-only]
                                     [--database sqlite|postgres] [--instances 1] [--load-only]

Trains nothing. Uses the model exported to ``models/`` (``python -m ecgpaper
export``); ``--build-vgg16`` instead builds the paper's 224 px VGG16 (random
weights: speed does not depend on them) into a temporary models folder.

1. bare forward pass: the Classifier's own compiled ``tf.function`` in this
   process, on the preprocessed page (with and without Grad-CAM);
2. the real server (``ecgpaper.serve.server``: gunicorn, loopback, free port, fresh
   temporary database) and a user with a token; sequential uploads of a
   full-size (2213 x 1572) synthetic ECG page as JPEG, with ``?explain=0`` and
   with the Grad-CAM heat map (section 5.2);
3. ``--clients`` concurrent clients uploading for ``--seconds`` seconds: p50/p95
   and error counts (any 5xx fails the target);
4. memory: a one-worker server accepting 40 megapixels, and one upload of a
   40-megapixel 16-bit greyscale PNG of constant colour (about 100 KB on the wire,
   the decompression-bomb-like case of webapp/README.md): the worker's peak
   resident memory during that request (``VmHWM``, reset just before it through
   ``/proc/<pid>/clear_refs``) above its resident memory when idle.
   ``--memory-only`` runs just this part.

``--database postgres --postgres-url URL`` runs the server(s) on the PostgreSQL
server at URL (a role that may create databases: each run gets new ones there)
instead of SQLite; ``python tests/support/devdb.py --durable`` starts a
throw-away one and prints its URL (the README's figures). ``--instances 2``
starts two ``serve`` instances on one database with one shared upload folder and
secret key (webapp/README.md), and the load clients alternate between them;
``--load-only`` measures just the load (step 3), for comparing the databases.

Targets: p50 end-to-end <= 1.3 x bare forward without Grad-CAM and <= 2.5 x
with it; no 5xx under load; the 40-megapixel upload under 300 MB above the idle
worker. Client and server share the machine's cores.
Writes ``results/benchmarks/serve.json`` (``serve_memory.json`` with ``--memory-only``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ecgpaper import paths  # noqa: E402
from ecgpaper.config import PAPER_IMAGE_SIZE  # noqa: E402
from ecgpaper.errors import UserError  # noqa: E402
from ecgpaper.runs.export import EXPORT_NAME  # noqa: E402
from ecgpaper.serve.live import API, LiveServer, ServerFailed, auth, running_instances  # noqa: E402


def percentiles(values_ms: list[float]) -> dict:
    a = np.asarray(values_ms, dtype=float)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "mean_ms": round(float(a.mean()), 1)}


def build_vgg16(folder: Path) -> None:
    """The paper's model shape (VGG16, 224 px, 4 classes) with random weights, exported
    through the pipeline's own export contract (``ecgpaper.runs.export.write_export``)."""
    import tempfile

    from ecgpaper.model.backbones import build_model
    from ecgpaper.paths import Workspace
    from ecgpaper.runs.export import write_export

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "vgg16-untrained.keras"
        build_model("VGG16", image_size=PAPER_IMAGE_SIZE, weights="none").save(model_file)
        config = {"model": "VGG16", "image_size": PAPER_IMAGE_SIZE, "scaling": "rescale", "fit": "resize",
                  "crop": False, "protocol": "none"}
        from ecgpaper.data.pagegate import twin_gate

        write_export(model_file, config, Workspace("none (untrained, speed benchmark only)", "bench"),
                     run_id="bench-vgg16-untrained", synthetic=True, metrics={},
                     selected_by="benchmarks/bench_serve.py --build-vgg16", page_gate=twin_gate(),
                     dest=folder)


def sample_upload() -> bytes:
    """A full-size synthetic ECG page as JPEG, as a scanner or ECG cart would send it."""
    from ecgpaper.data.twin_render import render_page

    page = render_page("MI", np.random.default_rng(0), patient_id="BENCH-0001", date="2024-01-01 09:00")
    buf = io.BytesIO()
    page.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bare_forward(models_dir: Path, upload: bytes, repeats: int) -> tuple[dict, dict]:
    """Median/p95 of the Classifier's compiled forward pass (and with Grad-CAM), in process."""
    from ecgpaper.data.preprocess import prepare_image
    from ecgpaper.serve.inference import Classifier, decode_upload

    clf = Classifier(models_dir)
    batch = prepare_image(decode_upload(upload, load=False), clf.settings)[np.newaxis]
    timings = {False: [], True: []}
    for explain in (False, True):
        for _ in range(3):
            clf.forward(batch, explain=explain)
        for _ in range(repeats):
            t0 = time.perf_counter()
            clf.forward(batch, explain=explain)
            timings[explain].append((time.perf_counter() - t0) * 1e3)
    model = {"name": clf.metadata["model"], "input_size": clf.settings.size,
             "run_id": clf.metadata["run_id"], "dataset": clf.metadata["dataset"],
             "synthetic": clf.metadata["synthetic"]}
    return model, {"forward": percentiles(timings[False]),
                   "forward_with_gradcam": percentiles(timings[True])}


#: no throttling: the benchmark is the only client
UNTHROTTLED = {"ECGWEB_THROTTLE_USER": "1000000/min", "ECGWEB_THROTTLE_UPLOAD": "1000000/min"}


def bench_user(server: LiveServer) -> str:
    """The API token of a new user of ``server``."""
    return server.create_users({"bench": secrets.token_urlsafe(16)})["bench"]


class PostgresServer:
    """The PostgreSQL server at ``url`` (``--postgres-url``): :meth:`database_url` creates a
    new database there for each server (``LiveServer(postgres=...)``)."""

    def __init__(self, url: str):
        self.url = url

    def database_url(self, name: str) -> str:
        import psycopg

        name = f"bench_{name}_{secrets.token_hex(4)}"  # new on every run, on a server that stays
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlsplit(self.url)._replace(path=f"/{name}").geturl()


def post(session, url: str, token: str, upload: bytes, explain: bool):
    t0 = time.perf_counter()
    r = session.post(f"{url}{API}/classifications/{'' if explain else '?explain=0'}",
                     headers=auth(token),
                     files={"image": ("bench.jpg", upload, "image/jpeg")}, timeout=120)
    return r, (time.perf_counter() - t0) * 1e3


def sequential(url: str, token: str, upload: bytes, n: int, explain: bool) -> dict:
    import requests

    session = requests.Session()
    client, server_total, server_inference = [], [], []
    for i in range(n + 2):
        r, ms = post(session, url, token, upload, explain)
        if r.status_code != 201:
            raise UserError(f"upload answered {r.status_code}: {r.text[:300]}")
        if i >= 2:  # the first two warm up the worker's code paths
            client.append(ms)
            server_total.append(r.json()["total_ms"])
            server_inference.append(r.json()["inference_ms"])
    return {"client": percentiles(client), "server_total": percentiles(server_total),
            "server_inference": percentiles(server_inference)}


def under_load(urls: list[str], token: str, upload: bytes, clients: int, seconds: float) -> dict:
    import requests

    latencies, statuses, failures = [], {}, []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(url: str) -> None:
        session = requests.Session()
        while time.perf_counter() < stop_at:
            try:
                r, ms = post(session, url, token, upload, explain=True)
                with lock:
                    latencies.append(ms)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except requests.RequestException as exc:
                with lock:
                    failures.append(type(exc).__name__)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(urls[i % len(urls)],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "instances": len(urls), "seconds": round(elapsed, 1),
            "requests": len(latencies),
            "throughput_per_s": round(len(latencies) / elapsed, 2), **percentiles(latencies or [0.0]),
            "status_counts": {str(k): v for k, v in sorted(statuses.items())},
            "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
            "errors_other_status": sum(v for k, v in statuses.items() if k != 201 and k < 500),
            "connection_errors": len(failures)}


@contextlib.contextmanager
def serving(tmp: Path, models_dir: Path, workers: int, postgres_url: str | None, instances: int):
    """``instances`` servers (ready once their model is loaded) on one database: a
    SQLite file, or a new database on the PostgreSQL server at ``postgres_url``; one
    shared upload folder and secret key."""
    pg = PostgresServer(postgres_url) if postgres_url else None
    with running_instances(tmp / "instances", instances, {"ECGWEB_MODELS_DIR": str(models_dir), **UNTHROTTLED},
                           postgres=pg, workers=workers, require_model=True, start_timeout=300) as servers:
        yield servers


MEMORY_PAGE = (7745, 5164)  # 39.995 megapixels: just inside a 40-megapixel limit
MEMORY_TARGET_MB = 300


def constant_16bit_png(size=MEMORY_PAGE) -> bytes:
    """A 16-bit greyscale PNG of one colour: megapixels that compress to almost nothing."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("I;16", size, 41_000).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise UserError(f"/proc/{pid}/status has no {field} (Linux only)")


def upload_memory(models_dir: Path, tmp: Path) -> dict:
    """Peak resident memory of one gunicorn worker while it classifies and stores one
    40-megapixel 16-bit PNG, above the worker's idle resident memory (Linux /proc)."""
    import psutil
    import requests

    with LiveServer(tmp / "memory", {"ECGWEB_MODELS_DIR": str(models_dir), "ECGWEB_MAX_MEGAPIXELS": "40",
                                     **UNTHROTTLED}, require_model=True, start_timeout=300) as server:
        token = bench_user(server)
        (worker,) = psutil.Process(server.proc.pid).children()
        session = requests.Session()
        for _ in range(2):  # warm the request path (imports, first queries, heat map code)
            r, _ms = post(session, server.url, token, sample_upload(), explain=True)
            r.raise_for_status()
        upload = constant_16bit_png()
        time.sleep(1.0)
        idle_kb = _proc_status_kb(worker.pid, "VmRSS")
        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        r = session.post(f"{server.url}{API}/classifications/",
                         headers=auth(token),
                         files={"image": ("page-40mp-16bit.png", upload, "image/png")}, timeout=300)
        if r.status_code != 201:
            raise UserError(f"the 40-megapixel upload answered {r.status_code}: {r.text[:300]}")
        peak_kb = _proc_status_kb(worker.pid, "VmHWM")
    above_mb = (peak_kb - idle_kb) / 1024
    return {"upload": {"format": "PNG", "mode": "I;16 (16-bit grey, one colour)",
                       "size": list(MEMORY_PAGE), "megapixels": round(MEMORY_PAGE[0] * MEMORY_PAGE[1] / 1e6, 1),
                       "bytes": len(upload)},
            "worker_idle_rss_mb": round(idle_kb / 1024, 1), "worker_peak_rss_mb": round(peak_kb / 1024, 1),
            "peak_above_idle_mb": round(above_mb, 1), "target_mb": MEMORY_TARGET_MB,
            "target_met": above_mb < MEMORY_TARGET_MB, "status": r.status_code}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=str(paths.MODELS), help="exported model (default %(default)s)")
    ap.add_argument("--build-vgg16", action="store_true",
                    help="benchmark a freshly built 224 px VGG16 (random weights) instead")
    ap.add_argument("--requests", type=int, default=30, help="sequential uploads per mode")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients under load")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of the load test")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak memory of one 40-megapixel 16-bit PNG upload")
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                    help="the server's database (postgres: on the server of --postgres-url)")
    ap.add_argument("--postgres-url", default=os.environ.get("ECGWEB_BENCH_POSTGRES_URL"),
                    help="with --database postgres: postgres://user@host:port/db of a role that may "
                         "create databases (default $ECGWEB_BENCH_POSTGRES_URL); "
                         "`python tests/support/devdb.py --durable` starts a throw-away one")
    ap.add_argument("--instances", type=int, default=1, help="serve instances on the one database")
    ap.add_argument("--load-only", action="store_true", help="only the load test (step 3)")
    ap.add_argument("--out", default=None, help="default results/benchmarks/serve.json "
                    "(serve_memory.json with --memory-only, serve_load_<database>_<n>.json with --load-only)")
    args = ap.parse_args()
    default_name = ("serve_memory.json" if args.memory_only else
                    f"serve_load_{args.database}_{args.instances}.json" if args.load_only else "serve.json")
    out = Path(args.out or paths.BENCHMARKS / default_name)
    if args.database == "postgres" and not args.postgres_url:
        sys.exit("--database postgres needs --postgres-url (or $ECGWEB_BENCH_POSTGRES_URL): a PostgreSQL "
                 "server on which it may create databases; `python tests/support/devdb.py --durable` "
                 "starts a throw-away one and prints its URL")
    postgres_url = args.postgres_url if args.database == "postgres" else None

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        models_dir = Path(args.models_dir)
        if args.build_vgg16:
            models_dir = tmp / "models"
            build_vgg16(models_dir)
        elif not (models_dir / f"{EXPORT_NAME}.json").is_file():
            sys.exit(f"no exported model in {models_dir}: run `python -m ecgpaper run baseline` (it "
                     "exports the best run), or pass --build-vgg16 to benchmark the paper's 224 px "
                     "VGG16 with random weights.")
        if args.memory_only:
            memory = upload_memory(models_dir, tmp)
            result = {"benchmark": "web service: peak worker memory of one 40-megapixel upload",
                      "memory": memory, "cpu_count": os.cpu_count(), "python": platform.python_version(),
                      "machine": platform.machine(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
            return
        upload = sample_upload()
        if args.load_only:
            with serving(tmp, models_dir, args.workers, postgres_url, args.instances) as servers:
                load = under_load([srv.url for srv in servers], bench_user(servers[0]), upload,
                                  args.clients, args.seconds)
            result = {"benchmark": "web service under load: database and instances",
                      "database": args.database, "instances": args.instances,
                      "gunicorn_workers_per_instance": args.workers, "load": load,
                      "upload": {"format": "JPEG", "page_size": [2213, 1572], "bytes": len(upload),
                                 "explain": True},
                      "cpu_count": os.cpu_count(), "python": platform.python_version(),
                      "machine": platform.machine(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
            return
        model, bare = bare_forward(models_dir, upload, args.requests)
        print(f"bare forward ({model['name']}, {model['input_size']} px): {bare}", flush=True)
        if (model["name"], model["input_size"]) != ("VGG16", PAPER_IMAGE_SIZE):
            print("note: the exported model is not the paper's 224 px VGG16; --build-vgg16 measures that one")

        with serving(tmp, models_dir, args.workers, postgres_url, args.instances) as servers:
            server = servers[0]
            token = bench_user(server)
            plain = sequential(server.url, token, upload, args.requests, explain=False)
            print(f"end to end, no Grad-CAM: {plain['client']}", flush=True)
            explained = sequential(server.url, token, upload, args.requests, explain=True)
            print(f"end to end, Grad-CAM: {explained['client']}", flush=True)
            load = under_load([srv.url for srv in servers], token, upload, args.clients, args.seconds)
            print(f"{args.clients} clients, {args.seconds:.0f} s: {load}", flush=True)
        memory = upload_memory(models_dir, tmp)
        print(f"40-megapixel 16-bit PNG upload: {memory}", flush=True)

    import tensorflow as tf

    bare_p50 = bare["forward"]["p50_ms"]
    ratio_plain = plain["client"]["p50_ms"] / bare_p50
    ratio_gradcam = explained["client"]["p50_ms"] / bare_p50
    result = {
        "benchmark": "web service: end-to-end upload latency vs the bare forward pass, and load",
        "model": {**model, "built_by_benchmark": args.build_vgg16},
        "upload": {"format": "JPEG", "page_size": [2213, 1572], "bytes": len(upload)},
        "bare": bare,
        "end_to_end_no_gradcam": plain,
        "end_to_end_gradcam": explained,
        "ratio_p50_no_gradcam": round(ratio_plain, 3),
        "ratio_p50_gradcam": round(ratio_gradcam, 3),
        "load": load,
        "memory": memory,
        "targets": {"ratio_p50_no_gradcam_max": 1.3, "ratio_p50_gradcam_max": 2.5, "errors_5xx_max": 0,
                    "upload_memory_above_idle_mb_max": MEMORY_TARGET_MB},
        "targets_met": {"no_gradcam": ratio_plain <= 1.3, "gradcam": ratio_gradcam <= 2.5,
                        "no_5xx": load["errors_5xx"] == 0, "upload_memory": memory["target_met"]},
        "database": args.database, "instances": args.instances,
        "gunicorn_workers": args.workers, "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (UserError, ServerFailed) as exc:
        sys.exit(f"error: {exc}")
