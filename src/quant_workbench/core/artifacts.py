"""Atomic artifact writes, content hashes for cache keys, verified reuse and stale temp clean-up."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from quant_workbench.core.errors import WorkbenchError

log = logging.getLogger(__name__)

# Temp files are `.<target name>.qwbtmp-<host>-<pid>-<random>.tmp`: recognisable as the workbench's own,
# and the writer's host and PID tell a later run whether the writer is still alive (a killed writer's
# temp file can be removed, a concurrent writer's must not).
TEMP_MARK = "qwbtmp"
_TEMP_RE = re.compile(rf"^\..+\.{TEMP_MARK}-(?P<host>[A-Za-z0-9_.-]*)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40]


def temp_prefix(target: Path) -> str:
    """The mkstemp prefix of a temp file for `target` (see TEMP_MARK)."""
    return f".{target.name}.{TEMP_MARK}-{_host_tag()}-{os.getpid()}-"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shareable(path: Path | str, mode: int = 0o666) -> None:
    """mkstemp creates 0600; artifacts are read by other users (a Triton server), so give them the mode a
    plain `open()` would: `mode` minus the umask (0644 under the usual 022)."""
    os.chmod(path, mode & ~current_umask())


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it over `target` only if the block succeeds.

    A crash or Ctrl-C half-way therefore never leaves a half-written artifact under the final name; a
    kill -9 leaves the temp file, which `remove_stale_temp_files` deletes at the start of the next run.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WorkbenchError(
            f"cannot write to output folder '{target.parent}': {exc.strerror or exc}.",
            "choose a writable folder with --set output_dir=PATH or fix its permissions",
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            make_shareable(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(*folders: Path | str) -> list[Path]:
    """Delete the temp files of killed workbench writers (our naming pattern, this host, dead PID) under `folders`.

    Only files matching TEMP_MARK's pattern are touched: a user's own `.tmp` files, and temp files of a
    live writer (another run sharing the calibration cache), are left alone.
    """
    host = _host_tag()
    removed: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in root.rglob(f"*.{TEMP_MARK}-*.tmp"):
            m = _TEMP_RE.match(path.name)
            # another host's writer (shared folder) or a live one (possibly this very process) is not stale
            if not m or m["host"] != host or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError as exc:  # a clean-up that cannot run must not stop the run
                log.warning("cannot remove stale temp file %s: %s", path, exc)
                continue
            log.info("removed stale temp file %s (%d bytes) of a killed writer (pid %s)", path, size, m["pid"])
            removed.append(path)
    return removed


def write_bytes(target: Path | str, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path | str, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: Path | str, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys), for cache keys."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode("utf-8"))


def hash_tree(path: Path | str, patterns: tuple[str, ...] = ("*",)) -> str:
    """Content hash of the files of a folder (names and bytes), independent of mtimes."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in root.rglob(pat) if p.is_file()})
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".key")


def structural_check(path: Path) -> None:
    """A cheap load that proves the file is what its suffix says (raises otherwise): ONNX without its
    external data, an npz's archive index, a JSON document. Other files are checked by hash only."""
    name = path.name
    if name.endswith(".onnx"):
        import onnx

        onnx.load(str(path), load_external_data=False)
    elif name.endswith(".npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            _ = data.files
    elif name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))


def artifact_problem(path: Path, key: str) -> str | None:
    """Why `path` cannot be reused for inputs hashing to `key`, or None when it can.

    Reuse needs all three: the `.key` sidecar names `key`, the file's sha256 equals the one the sidecar
    recorded when the file was written (a truncated or edited file differs), and a structural load works.
    """
    sidecar = _sidecar(path)
    if not path.exists():
        return "missing"
    if not sidecar.exists():
        return "no .key sidecar"
    lines = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not lines or lines[0] != key:
        return "made from other inputs"
    recorded = next((x.split(":", 1)[1] for x in lines[1:] if x.startswith("sha256:")), None)
    if recorded is None:
        return "sidecar without a content hash (older workbench)"
    if sha256_file(path) != recorded:
        return "content hash differs from the one recorded when it was written (truncated or modified)"
    try:
        structural_check(path)
    except Exception as exc:
        return f"does not load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def content_problem(path: Path) -> str | None:
    """Why `path` is not the file its run wrote (its sha256 differs from the one its `.key` sidecar
    recorded, or nothing recorded one), or None when it is. The check `quantize deploy` runs on every
    file it ships: whatever the inputs were, the bytes must be the ones the run checked."""
    sidecar = _sidecar(path)
    if not path.is_file():
        return "missing" if not path.exists() else "not a file"
    if not sidecar.is_file():
        return "no .key sidecar records its content hash"
    lines = sidecar.read_text(encoding="utf-8", errors="replace").split()
    recorded = next((x.split(":", 1)[1] for x in lines[1:] if x.startswith("sha256:")), None)
    if recorded is None:
        return "its .key sidecar records no content hash (written by an older workbench)"
    if sha256_file(path) != recorded:
        return "its sha256 differs from the one recorded when the run wrote it (truncated, edited or damaged since)"
    return None


def artifact_is_current(path: Path, key: str) -> bool:
    """True when `path` may be reused for inputs hashing to `key` (see artifact_problem); a file that
    exists but fails the checks is logged, so a rebuild never happens silently."""
    problem = artifact_problem(path, key)
    if problem is not None and problem != "missing":
        log.warning("rebuilding %s: %s", path, problem)
    return problem is None


def mark_artifact(path: Path, key: str) -> None:
    """Written after the artifact itself, so a crash in between leaves a stale (rebuilt) artifact, never a
    wrong one. Records the content hash, so a later truncation or edit is caught on reuse."""
    write_text(_sidecar(path), f"{key}\nsha256:{sha256_file(path)}\n")


def cached(path: Path, key: str, build: Callable[[], object], *, also: Sequence[Path] = ()) -> bool:
    """Reuse `path` when its sidecar says it was made from `key` and its bytes verify (`artifact_is_current`);
    otherwise `build()` writes it and it is marked with `key`. `also`: files the same build writes beside it
    (OpenVINO's .bin, a build report), reused only together with it. The one way a stage caches a file it
    makes; True when it was built."""
    files = [path, *also]
    if all(artifact_is_current(f, key) for f in files):
        return False
    build()
    # the main file last: a crash between marks leaves it unmarked, so the next run rebuilds all of them
    for f in reversed(files):
        mark_artifact(f, key)
    return True


def onnx_size(path: Path) -> int:
    """Bytes of an ONNX model on disk, its external-data file included (what a deployment copies)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
