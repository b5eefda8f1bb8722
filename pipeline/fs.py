"""Every filesystem touch of the builder goes through here (local paths today; fsspec URLs next).

Publishing is atomic: write to a hidden temp file in the target folder, fsync, rename, fsync the folder.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(final: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that appears at `final` only once fully written and synced."""
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_open(final) as f:
        f.write(data)


def write_json_atomic(final: Path, value: Any) -> None:
    write_bytes_atomic(final, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def remove_temps(folder: Path) -> int:
    """Delete leftovers of killed writers; returns how many were removed."""
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if is_temp(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def read_file(path: Path) -> bytes:
    return path.read_bytes()
