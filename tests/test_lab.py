"""JupyterLab from the project, as a student starts it: ``python -m ecgpaper lab``.

The server runs headless on loopback with its own Jupyter config/runtime
folders and a known token, and is stopped by the test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ecgpaper.lab import KERNEL_NAME
from ecgpaper.paths import NOTEBOOKS

TOKEN = "ecgpaper-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab_server(tmp_path):
    port = free_port()
    env = {**os.environ, "JUPYTER_TOKEN": TOKEN, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ecgpaper", "lab", "--no-browser", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/api/status", params={"token": TOKEN}, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not answer within 120 s"
            time.sleep(1)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_lab_serves_the_notebooks_with_the_project_kernel(lab_server):
    auth = {"Authorization": f"token {TOKEN}"}
    page = requests.get(f"{lab_server}/lab", headers=auth, timeout=30)
    assert page.status_code == 200 and "JupyterLab" in page.text
    specs = requests.get(f"{lab_server}/api/kernelspecs", headers=auth, timeout=30).json()
    assert KERNEL_NAME in specs["kernelspecs"] and specs["default"] == KERNEL_NAME
    argv = specs["kernelspecs"][KERNEL_NAME]["spec"]["argv"]
    assert os.path.abspath(argv[0]) == os.path.abspath(sys.executable)
    listing = requests.get(f"{lab_server}/api/contents", headers=auth, timeout=30).json()
    assert {"02_baseline.ipynb", "06_beyond_the_paper.ipynb"} <= {c["name"] for c in listing["content"]}
    # the kernel starts and imports the package from this checkout (what every notebook does first)
    kernel = requests.post(f"{lab_server}/api/kernels", headers=auth, json={"name": KERNEL_NAME},
                           timeout=60).json()
    try:
        printed = execute_in_kernel(lab_server, kernel["id"], "import ecgpaper; print(ecgpaper.__file__)")
        assert Path(printed.strip()).resolve() == (NOTEBOOKS.parent / "ecgpaper" / "__init__.py").resolve()
    finally:
        requests.delete(f"{lab_server}/api/kernels/{kernel['id']}", headers=auth, timeout=30)


def execute_in_kernel(base: str, kernel_id: str, code: str, timeout: float = 90) -> str:
    """Run ``code`` through the server's kernel websocket (Jupyter messaging protocol); its stdout."""
    import uuid

    import websocket

    ws = websocket.create_connection(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels"
                                     f"?token={TOKEN}", timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                       "session": uuid.uuid4().hex, "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "store_history": False,
                                        "user_expressions": {}, "allow_stdin": False}}))
        out, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out += content["text"]
            elif kind == "error":
                raise AssertionError(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise AssertionError(f"no answer from the kernel within {timeout} s")
    finally:
        ws.close()


def test_every_notebook_asks_for_the_project_kernel():
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert spec["name"] == KERNEL_NAME, nb.name
