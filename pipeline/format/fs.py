"""Every local filesystem touch of the builder, the verifier and the dataset reader goes through here (object
stores: `pipeline.format.stores`, which publishes files made here).

Publishing is atomic: write to a hidden temp file (or folder) beside the target, fsync, rename, fsync the
folder. Temp names are `.{name}.tmp-{pid}-{hex}`: only this module makes them, and only it removes them.
Sources are opened as regular files only: a FIFO would block `open()` forever and a device never ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"
NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9]+-[0-9a-f]{8}")  # exactly what temp_name makes
_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


class NotRegularFileError(OSError):
    """An input that is not a regular file (FIFO, socket, device, folder), also when reached by a link."""


def temp_name(final: Path) -> Path:
    """`.{name}.tmp-{pid}-{hex}` beside `final`; a long name is shortened (at a character) so that the temp name
    is a legal name whenever `final`'s is."""
    tail = f"{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    name = os.fsencode(final.name)
    if len(name) > NAME_MAX - 1 - len(tail):
        name = name[: NAME_MAX - 1 - len(tail)]
        while name and name[-1] >= 0x80 and name[-1] < 0xC0:  # a UTF-8 continuation byte: back to the lead
            name = name[:-1]
        name = name[:-1] if name and name[-1] >= 0xC0 else name  # and the lead of the cut character
    return final.with_name(f".{os.fsdecode(name)}{tail}")


def is_temp(path: Path) -> bool:
    return _TEMP_NAME.fullmatch(path.name) is not None


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


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temp folder that is renamed to `final` (which must not exist) once the block succeeds."""
    tmp = temp_name(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_open(final) as f:
        f.write(data)


def json_bytes(value: Any) -> bytes:
    """The one spelling of a JSON document on disk or in a store: sorted keys, indented, newline-terminated."""
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def write_json_atomic(final: Path, value: Any) -> None:
    write_bytes_atomic(final, json_bytes(value))


def output_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (None when it can), to follow the option and path in a message
    (`f"--json {path}{problem}"`): a folder is there, or its folder is missing or is a file. Said before the
    work whose result it is to hold."""
    path = Path(path)
    if path.is_dir():
        return " is a folder; it takes a file name"
    if path.parent.exists() and not path.parent.is_dir():
        return f": {path.parent} is a file, not a folder"
    if not path.parent.is_dir():
        return f": the folder {path.parent} does not exist"
    return None


def output_folder_problem(path: Path) -> str | None:
    """Why a folder cannot be made or written at `path` (None when it can; as `output_file_problem`'s): a file
    is there or on the way."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            return None if part.is_dir() else f": {part} is a file, not a folder"
    return None


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def remove_temps(folder: Path) -> int:
    """Delete leftovers of killed writers (temp files and temp folders); returns how many were removed."""
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if is_temp(p)]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def file_kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), f"not a regular file (mode {stat.S_IFMT(mode):o})")


@contextmanager
def open_regular(path: Path) -> Iterator[tuple[IO[bytes], int]]:
    """Open a source for reading if, links followed, it is a regular file; yields (file, size in bytes).

    Opened non-blocking and checked on the open descriptor, so a FIFO can neither block nor be swapped in
    between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{file_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st.st_size
