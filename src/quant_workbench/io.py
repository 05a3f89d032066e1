"""Atomic artifact writes and content hashes for cache keys."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import WorkbenchError


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it over `target` only if the block succeeds.

    A crash or Ctrl-C half-way therefore never leaves a half-written artifact under the final name.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WorkbenchError(
            f"cannot write to output folder '{target.parent}': {exc.strerror or exc}.",
            "choose a writable folder with --set output_dir=PATH or fix its permissions",
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def artifact_is_current(path: Path, key: str) -> bool:
    """True when `path` exists and its `.key` sidecar says it was made from inputs hashing to `key`."""
    sidecar = path.with_name(path.name + ".key")
    return path.exists() and sidecar.exists() and sidecar.read_text().strip() == key


def mark_artifact(path: Path, key: str) -> None:
    """Written after the artifact itself, so a crash in between leaves a stale (rebuilt) artifact, never a wrong one."""
    write_text(path.with_name(path.name + ".key"), key + "\n")
