"""Start and stop a local `tritonserver` (the one bundled by the `nvidia-pytriton` wheel, or any install).

    with TritonServer(repo_path, models=repo.cpu_models()) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)

The server listens on 127.0.0.1 only, on free ports, in its own process group (its Python-backend stub
processes included), and `stop()` ends that whole group: SIGINT, then SIGKILL after a grace period,
then removes the shared-memory regions the Python backend left behind.

How the bundled server is launched (the same as pytriton does it): the binary runs in place; a
private backend folder holds links to the wheel's Python backend and to the stub built for this
interpreter's minor version; LD_LIBRARY_PATH lists the wheel's `nvidia_pytriton.libs` (the backend
libraries' RPATH is relative to the wheel) and this interpreter's LIBDIR first, so that the stub
embeds this interpreter's libpython; PYTHONHOME/PYTHONPATH make the stub's interpreter see this
environment's site-packages (a venv's too), so model.py imports numpy, onnxruntime and transformers.

A different server: set QWB_TRITONSERVER=/path/to/bin/tritonserver (its backends are looked up in
../backends, e.g. /opt/tritonserver in NGC containers).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_workbench.core.errors import WorkbenchError

ENV_BINARY = "QWB_TRITONSERVER"
HOST = "127.0.0.1"


class TritonServerError(WorkbenchError):
    """tritonserver is missing, does not start, or a model does not load."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path  # folder holding python/libtriton_python.so
    stub: Path | None  # Python-backend stub for this interpreter, when the backend folder has none
    libs: Path | None  # extra shared libraries (the wheel's nvidia_pytriton.libs)

    def describe(self) -> str:
        return f"{self.binary} (backends {self.backends}{', stub ' + str(self.stub) if self.stub else ''})"


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def find_tritonserver() -> TritonInstall | None:
    """The server named by $QWB_TRITONSERVER, else the one inside the installed nvidia-pytriton wheel."""
    named = os.environ.get(ENV_BINARY)
    if named:
        binary = Path(named)
        if not binary.is_file():
            return None
        backends = binary.parent.parent / "backends"
        return TritonInstall(binary, backends, None, None)
    spec = importlib.util.find_spec("pytriton")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    binary = root / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    stub = root / "tritonserver" / "python_backend_stubs" / python_version() / "triton_python_backend_stub"
    libs = root.parent / "nvidia_pytriton.libs"
    return TritonInstall(binary, root / "tritonserver" / "backends", stub, libs if libs.is_dir() else None)


def require_tritonserver() -> TritonInstall:
    found = find_tritonserver()
    if found is None:
        raise TritonServerError(
            "no tritonserver binary found: the nvidia-pytriton wheel is not installed"
            + (f" and ${ENV_BINARY} points nowhere ({os.environ[ENV_BINARY]})" if os.environ.get(ENV_BINARY) else "")
            + ".",
            "pip install 'quant-workbench[triton]' (Linux x86-64/arm64, glibc 2.35+), or set "
            f"{ENV_BINARY}=/opt/tritonserver/bin/tritonserver",
        )
    if found.stub is not None and not found.stub.is_file():
        raise TritonServerError(
            f"the nvidia-pytriton wheel has no Python-backend stub for Python {python_version()} ({found.stub}).",
            "use Python 3.10, 3.11 or 3.12 for the served models",
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _site_paths() -> list[str]:
    """This interpreter's import path minus the stdlib (which PYTHONHOME provides) and the cwd."""
    stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    out = []
    for p in sys.path:
        if not p or p in stdlib or p.endswith(".zip") or p.endswith("lib-dynload"):
            continue
        if os.path.isdir(p) and p not in out:
            out.append(p)
    return out


class TritonServer:
    """A tritonserver subprocess serving `repository`, loading only `models` (explicit model control)."""

    def __init__(
        self,
        repository: Path | str,
        models: Sequence[str] | None = None,
        *,
        install: TritonInstall | None = None,
        startup_timeout_s: float = 180.0,
        stop_timeout_s: float = 20.0,
        log_verbose: int = 0,
        shm_default_byte_size: int = 4 << 20,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).resolve()
        self.models = list(models or [])
        self.install = install or require_tritonserver()
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_verbose = log_verbose
        self.shm_default_byte_size = shm_default_byte_size
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.shm_prefix = f"qwb{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._log_file: Any = None

    # ---- endpoints

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def logs(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _tail(self, n: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-n:])

    # ---- lifecycle

    def _backend_dir(self, workdir: Path) -> Path:
        if self.install.stub is None:
            return self.install.backends
        python = workdir / "backends" / "python"
        python.mkdir(parents=True)
        for item in (self.install.backends / "python").iterdir():
            if item.name != "__pycache__":
                (python / item.name).symlink_to(item)
        (python / "triton_python_backend_stub").symlink_to(self.install.stub)
        return workdir / "backends"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
        if self.install.libs is not None:
            libdirs.append(str(self.install.libs))
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libdirs if p)
        env["PYTHONHOME"] = sys.base_prefix
        env["PYTHONPATH"] = os.pathsep.join(_site_paths())
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        return env

    def _command(self, backends: Path) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={HOST}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={int(self.stop_timeout_s)}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_byte_size}",
            f"--backend-config=python,shm-growth-byte-size={1 << 20}",
            *self.extra_args,
        ]
        return cmd

    def start(self) -> TritonServer:
        if self.process is not None:
            raise TritonServerError("this TritonServer is already started.")
        self.workdir = Path(tempfile.mkdtemp(prefix="qwb-triton-"))
        backends = self._backend_dir(self.workdir)
        for attempt in range(3):
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
            self.log_path = self.workdir / f"tritonserver-{attempt}.log"
            self._log_file = self.log_path.open("wb")
            self.process = subprocess.Popen(
                self._command(backends),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() ends the stubs too
                preexec_fn=_die_with_parent,
            )
            atexit.register(self.stop)
            try:
                self._wait_ready()
                return self
            except TritonServerError:
                log = self.logs()
                self.stop(keep_workdir=True)
                if "address already in use" in log.lower() and attempt < 2:
                    continue
                self._cleanup_workdir()
                raise
        raise AssertionError("unreachable")

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} while starting. Last log lines:\n{self._tail()}",
                    "the log names the model that failed to load and why",
                )
            if self._get("/v2/health/ready") == 200 and all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            time.sleep(0.25)
        raise TritonServerError(
            f"tritonserver was not ready after {self.startup_timeout_s:.0f} s. Last log lines:\n{self._tail()}",
            "raise startup_timeout_s on a slow machine",
        )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, keep_workdir: bool = False) -> None:
        """End the server's whole process group; safe to call twice."""
        proc = self.process
        if proc is not None:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            pgid = proc.pid  # start_new_session: the group id is the server's pid
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.stop_timeout_s)
            # stubs that outlive the server (or a hung server) are killed with the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            self._wait_group_gone(pgid)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for leftover in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        if not keep_workdir:
            self._cleanup_workdir()

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.05)

    def _cleanup_workdir(self) -> None:
        if self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the server when the process (thread) that started it dies,
    so a killed test run or bench leaves no server behind (its stubs exit when the server is gone)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group exists (zombies of reparented stubs don't count)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        # fields: state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False
