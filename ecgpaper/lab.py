"""JupyterLab on the notebooks with the project's kernel (``python -m ecgpaper lab``).

The notebooks ask for the kernel ``ecgpaper``; :func:`ensure_kernel` registers
it in this environment (``sys.prefix``) when it is missing or points at another
Python, so the same command works in the ``.venv`` of ``./run_all.sh`` and in
the conda environment of ``environment.yml``. The runner (papermill) uses the
same kernel, so a notebook stepped through in JupyterLab runs exactly as in
``./run_all.sh``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ecgpaper import paths

KERNEL_NAME = "ecgpaper"
KERNEL_DISPLAY_NAME = "Python (ecgpaper)"


def kernel_python(name: str = KERNEL_NAME) -> str | None:
    """The Python executable the registered kernel ``name`` starts, or None if not registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    return spec.argv[0] if spec.argv else None


def ensure_kernel(log=print) -> str:
    """Register the ``ecgpaper`` kernel for this Python if needed; return its name."""
    registered = kernel_python()
    # compare the paths as written: every venv's python links to the same base binary
    if registered and os.path.abspath(registered) == os.path.abspath(sys.executable):
        return KERNEL_NAME
    from ipykernel.kernelspec import install

    where = install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix)
    log(f"registered the Jupyter kernel '{KERNEL_NAME}' ({sys.executable}) in {where}")
    return KERNEL_NAME


def kernel_encryption_available() -> bool:
    """CurveZMQ keys for kernels (jupyter_client >= 8.10 with a libsodium pyzmq): without
    them ipykernel warns "Kernel is running over TCP without encryption" at every start."""
    import zmq
    from jupyter_client.manager import KernelManager

    return bool(zmq.has("curve")) and "transport_encryption" in KernelManager.class_traits()


def lab_argv(*, port: int = 8888, ip: str = "127.0.0.1", open_browser: bool = True,
             notebook_dir: Path = paths.NOTEBOOKS) -> list[str]:
    """The ``jupyter lab`` command line: served on ``ip`` (loopback by default), rooted
    at the notebooks, new notebooks on the project's kernel."""
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebook_dir}",
            f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--MultiKernelManager.default_kernel_name={KERNEL_NAME}"]
    if kernel_encryption_available():
        argv.append("--KernelManager.transport_encryption=auto")
    if not open_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root
        argv.append("--allow-root")
    return argv


def launch_lab(*, port: int = 8888, ip: str = "127.0.0.1", open_browser: bool = True) -> None:
    """Register the kernel, then replace this process by JupyterLab (Ctrl-C stops it)."""
    ensure_kernel()
    argv = lab_argv(port=port, ip=ip, open_browser=open_browser)
    print(f"JupyterLab on http://{ip}:{port}/lab (notebooks: {paths.NOTEBOOKS}, kernel '{KERNEL_NAME}'); "
          "Ctrl-C to stop", flush=True)
    os.execv(argv[0], argv)
