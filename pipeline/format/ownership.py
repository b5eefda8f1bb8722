"""Touch nothing that is not ours: which files of OUT a build may write or remove, and one build per OUT.

A dataset folder carries the marker `mmforge.json`. A build writes into OUT only when OUT is new, empty, or
marked and every file in it is one the dataset's own documents name (the plan names its shards) or a temp
file of our writers; anything else is refused before anything is changed. `--overwrite` removes exactly
the named files that exist, and the temp files, nothing else. A folder without the marker (also a dataset
of format 1) is not ours to change.

`BuildLock` is an advisory `flock` on `OUT/.mmforge.lock` that holds the holder's pid, host and start time:
a second build is refused with the holder named; a lock file left by a killed build is not held, so it is
taken over (and said so).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

from pipeline.format import fs
from pipeline.format.contract import (
    DatasetPaths,
    DocumentError,
    dataset_name,
    document_name,
    read_marker,
    read_plan_header,
    write_marker,
)
from pipeline.format.schema import ConfigError

log = logging.getLogger(__name__)
_MAX_LISTED = 5


def check_names(listing: Collection[str], paths: DatasetPaths, where: str) -> None:
    """An object-store OUT, from its listing alone (nothing downloaded yet): refuse objects that no dataset
    can hold, and a non-empty prefix without the marker."""
    _refuse(sorted(rel for rel in listing if not dataset_name(rel)), listing, paths, where)
    if listing and paths.rel(paths.marker) not in listing:
        _refuse(sorted(listing), listing, paths, where)


def check_listed(paths: DatasetPaths, listing: Collection[str], where: str) -> None:
    """An object-store OUT: refuse (ConfigError) objects its documents do not name. `paths` is the stage
    that mirrors the store's documents; the listing holds every object, shards included. Without a plan
    header, plan entries are an unfinished plan's (the next plan replaces them)."""
    named = {paths.rel(p) for p in named_files(paths)}
    header = paths.rel(paths.plan_header) in listing
    unfinished = {rel for rel in listing if not header and rel.startswith("plan/") and document_name(rel)}
    _refuse(sorted(rel for rel in listing if rel not in named | unfinished), listing, paths, where)


def _refuse(foreign: list[str], listing: Collection[str], paths: DatasetPaths, where: str) -> None:
    if foreign and paths.rel(paths.marker) not in listing:
        raise ConfigError(
            f"output {where} is not empty and has no {paths.marker.name} marker, so it is not a dataset written "
            f"by this version ({', '.join(foreign[:_MAX_LISTED])}); choose a new or empty prefix"
        )
    if foreign:
        more = f" and {len(foreign) - _MAX_LISTED} more" if len(foreign) > _MAX_LISTED else ""
        raise ConfigError(
            f"output {where} holds objects this dataset did not write: {', '.join(foreign[:_MAX_LISTED])}{more}; "
            "nothing was changed (move them away, or choose another prefix)"
        )


def named_files(paths: DatasetPaths) -> set[Path]:
    """The files the dataset's documents name; an unreadable plan header leaves no way to tell."""
    if not paths.plan_header.exists():
        return paths.named_by(())
    try:
        header = read_plan_header(paths)
    except DocumentError as err:
        raise ConfigError(
            f"{paths.root}: {err}; cannot tell which files are ours, so nothing is changed (remove the folder "
            "yourself to start over)"
        ) from None
    return paths.named_by(tuple(s.name for s in header.shards))


def _ours(path: Path, paths: DatasetPaths, named: set[Path]) -> bool:
    """Named by the documents and a file or an empty folder (a folder with files under a named path holds
    someone's files), or our temp."""
    if path in named:
        return path.is_symlink() or not path.is_dir() or not any(path.iterdir())
    in_our_folder = path.parent in (paths.root, paths.plan_dir, paths.shards_dir)
    return in_our_folder and fs.is_temp(path) and not path.is_symlink()


def foreign_files(paths: DatasetPaths) -> list[str]:
    """Entries of OUT (recursively) that are neither named by its documents nor our temp files."""
    named, foreign = named_files(paths), []
    if paths.lock.is_symlink() or (paths.lock.exists() and not paths.lock.is_file()):
        foreign.append(paths.rel(paths.lock))  # never write through a link or into something else
        named.discard(paths.lock)
    for entry in sorted(paths.root.iterdir()):
        if entry in (paths.plan_dir, paths.shards_dir) and entry.is_dir() and not entry.is_symlink():
            foreign += [paths.rel(p) for p in sorted(entry.iterdir()) if not _ours(p, paths, named)]
        elif not _ours(entry, paths, named):
            foreign.append(paths.rel(entry) + ("/" if entry.is_dir() else ""))
    return foreign


def check_ownership(paths: DatasetPaths) -> None:
    """Raise ConfigError unless a build may write into OUT: new, empty, or ours and only ours."""
    if not paths.root.exists():
        return
    if not paths.root.is_dir():
        raise ConfigError(f"output {paths.root} exists and is not a folder")
    try:
        _check_owned(paths)
    except OSError as err:
        raise ConfigError(f"output {paths.root}: cannot read {err.filename or 'it'}: {err.strerror or err}") from None


def _check_owned(paths: DatasetPaths) -> None:
    entries = sorted(p.name for p in paths.root.iterdir() if p != paths.lock or p.is_symlink() or not p.is_file())
    if not entries:
        return
    if not paths.marker.is_file():
        raise ConfigError(
            f"output {paths.root} is not empty and has no {paths.marker.name} marker, so it is not a dataset "
            f"written by this version ({', '.join(entries[:_MAX_LISTED])}); choose a new or empty folder"
        )
    try:
        read_marker(paths)
    except DocumentError as err:
        raise ConfigError(f"output {paths.root}: {err}; choose a new or empty folder") from None
    foreign = foreign_files(paths)
    if foreign:
        more = f" and {len(foreign) - _MAX_LISTED} more" if len(foreign) > _MAX_LISTED else ""
        raise ConfigError(
            f"output {paths.root} holds files this dataset did not write: {', '.join(foreign[:_MAX_LISTED])}"
            f"{more}; nothing was changed (move them away, or choose another folder)"
        )


def claim(paths: DatasetPaths) -> None:
    """Create OUT if needed and mark it ours (call with the lock held, after `check_ownership`)."""
    if not paths.marker.exists():
        write_marker(paths)


def create_folder(paths: DatasetPaths) -> None:
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {paths.root}: {err.strerror or err}") from None


def remove_dataset(paths: DatasetPaths) -> int:
    """`--overwrite`: remove the files the documents name and our temp files (the marker stays); returns
    how many were removed. Call after `check_ownership`, with the lock held."""
    named, removed = named_files(paths) - {paths.marker, paths.lock}, 0
    for folder in (paths.shards_dir, paths.plan_dir, paths.root):
        removed += fs.remove_temps(folder)
    for path in sorted(named, key=lambda p: (p.parent != paths.shards_dir, str(p))):  # shards first
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
        elif path.is_dir():  # empty, or check_ownership would have refused
            path.rmdir()
    for folder in (paths.shards_dir, paths.plan_dir):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


class BuildLock:
    """`with BuildLock(paths, command):` one build per OUT, or ConfigError naming the build that holds it."""

    def __init__(self, paths: DatasetPaths, command: str = "") -> None:
        self.paths, self.command = paths, command or " ".join(sys.argv)
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        for _ in range(10):
            fd = _open_lock(self.paths, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"output {self.paths.root} is being built by another process ({holder}); wait for it to "
                    f"finish, or stop it (lock: {self.paths.lock})"
                ) from None
            if _same_file(fd, self.paths.lock):
                self._fd = fd
                self._take_over(fd)
                return self
            os.close(fd)  # the file was replaced between open and lock: try again
        raise ConfigError(f"could not take the lock {self.paths.lock}")

    def _take_over(self, fd: int) -> None:
        stale = _holder(fd)
        if stale:
            log.warning("took over a stale lock of a build that is gone (%s)", stale)
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            self.paths.lock.unlink(missing_ok=True)  # while still holding it: no one can take a dead file
            os.close(self._fd)
            self._fd = None


def _open_lock(paths: DatasetPaths, flags: int) -> int:
    """The lock file, opened without following a link or blocking on a FIFO; a regular file or ConfigError."""
    try:
        fd = os.open(paths.lock, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot open the lock {paths.lock}: {err.strerror or err}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise ConfigError(f"the lock {paths.lock} is not a plain file of ours ({fs.file_kind(st.st_mode)})")
    return fd


def lock_holder(paths: DatasetPaths) -> str | None:
    """Who holds OUT's build lock now (None when no build runs); never creates the lock file."""
    if not os.path.lexists(paths.lock):
        return None
    try:
        fd = _open_lock(paths, os.O_RDONLY)
    except ConfigError as err:
        return str(err)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd) or "unknown holder"
    finally:
        os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        info = json.loads(raw) if raw else {}
    except ValueError:
        return "unreadable lock file"
    if not isinstance(info, dict) or not info:
        return ""
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}: {info.get('command', '')}"[:300]
