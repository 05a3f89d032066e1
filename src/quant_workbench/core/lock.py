"""An advisory lock on a run folder, held for the whole run.

Two runs of one recipe share a run folder (its name is the recipe hash): without a lock both would do
all the work, their benchmarks would contend, and the last writer would win. The lock is `fcntl.flock`
on `<run folder>/.lock`, so the kernel releases it when the holder dies (kill -9 included) and a stale
lock file never blocks a later run. The file records the holder's PID, host and start time for the
message of the run that finds it taken.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from quant_workbench.core.errors import WorkbenchError

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class RunLockedError(WorkbenchError):
    """Another process holds the run folder's lock."""


class RunLock:
    """`with RunLock(run_dir): ...` holds the folder's lock; `wait_s` > 0 waits that long for a holder to finish."""

    def __init__(self, run_dir: Path, *, wait_s: float = 0.0, poll_s: float = 0.5) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.wait_s, self.poll_s = wait_s, poll_s
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise RunLockedError(
                        f"run folder '{self.path.parent}' is in use by another run ({_describe(holder)}); two runs on one folder "
                        "would repeat all the work and overwrite each other's artifacts.",
                        "wait for that run to finish (or stop it), pass --wait-lock SECONDS to wait for it, or use another "
                        "--run-id; search workers sharing a study need their own run folders (--run-id) and one --storage",
                    ) from None
                time.sleep(self.poll_s)
            except OSError as exc:  # a file system without flock (some network mounts): run unlocked, say so
                log.warning("cannot lock run folder %s (%s); concurrent runs on it are not prevented", self.path.parent, exc)
                os.close(fd)
                return
        # Holder details are written only once the lock is ours, so a reader never sees a loser's PID.
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def holder(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "holder unknown: it is still starting"
    return f"PID {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_utc')}"
