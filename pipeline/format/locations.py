"""Where a command may read and write: the `Location` type, a path of this machine (`LocalPath`), and a clear
refusal for every URL that is not one.

A location is resolved once from what the user typed (`pipeline.format.stores.location`): a path of this
machine, or a prefix or object of an object store (`pipeline.format.stores.StorePath`). Callers use its
operations (join, exists, walk, read, fetch, publish, stage) and never ask which kind it is: what differs
between a folder and a store (nothing is written in place on a store) is decided inside the two kinds. A
`Stage` is the folder of this machine that stands for a location while a command writes it.

Every path a command takes (SRC, OUT, --data, --out, --init, --recipe, --config, preview and export outputs)
goes through `local_location` (or `location`) before anything is read or written. Before it, `s3://bucket/out`
was taken as the relative folder `s3:/bucket/out` and a build "succeeded" into it. Now:
- a plain path is returned as it is;
- `file:///abs/path` (and `file://localhost/...`, `file:/abs/path`) becomes the local path; one without a
  path, or with a query or fragment, is refused;
- any other `scheme://` (or `scheme:/`) is refused, naming what is wrong: an unknown protocol, a known one whose fsspec
  driver is not installed (with the package to install), or an object store these commands do not read or
  write in place yet (mount the store, e.g. with s3fs-fuse or gcsfuse, or copy the data).
The refusal is a ValueError subclass raised before any file is touched; the command-line front ends turn it
into a usage error (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar
from urllib.parse import unquote, urlsplit

from pipeline.format import fs
from pipeline.format.schema import ConfigError

# `scheme:/...` (one slash is a URL too: `s3:/bucket` must not become a folder `s3:`); schemes of two or more
# characters, so a Windows drive letter (`C:/data`) stays a path
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")

Found = list[tuple[str, int, int | str]]  # (relative POSIX name, size, mtime_ns or the store's object version)


class LocationError(argparse.ArgumentTypeError, ValueError):
    """A path argument names a location these commands cannot use (argparse and click both report it)."""


@dataclass(frozen=True)
class Entry:
    size: int
    version: str  # what changes when the object does (ETag, generation or mtime)


class Stage(ABC):
    """The folder of this machine that stands for a location while a command writes it: a local folder is its
    own stage; a store's is a copy here whose finished files reach the store one upload each (`publish`).

    `listing` is what the location holds beyond `root` (a store: every object; a folder: nothing, since it is
    `root`), so on a folder `fetch`, `publish` and `remove` have nothing to do."""

    root: Path  # where the command writes
    lock_root: Path  # where this machine's one-writer lock goes: never inside a copy that `fetch` replaces
    published_to: str  # where finished files go when that is not `root` itself (a store URL), else ""

    @abstractmethod
    def listing(self) -> dict[str, Entry]:
        """What the location holds beyond `root`, by relative name (read fresh)."""

    @abstractmethod
    def fetch(self, want: Callable[[str], bool], listing: dict[str, Entry]) -> None:
        """Make `root` hold exactly the objects of `listing` that `want` (a copy, never trusted over the store)."""

    @abstractmethod
    def publish(self, *files: Path, keep: bool = True) -> None:
        """Make finished files below `root` visible at the location, one whole upload each; `keep=False` drops
        the local copy of each once sent (a folder's files are the location's own and always stay)."""

    @abstractmethod
    def remove(self, rels: list[str]) -> None:
        """Remove these objects of `listing()` from the location."""

    @abstractmethod
    def folder(self, rel: str) -> Path:
        """The folder `rel` below `root` to write into: made in a store's stage (every prefix of a store
        exists); a local folder's own, which may be missing (this machine does not see it)."""


class FolderStage(Stage):
    """A local folder is its own stage: written in place (atomically, by `fs`), nothing to copy or upload."""

    def __init__(self, root: Path) -> None:
        self.root = self.lock_root = root
        self.published_to = ""

    def listing(self) -> dict[str, Entry]:
        return {}

    def fetch(self, want: Callable[[str], bool], listing: dict[str, Entry]) -> None:
        return None

    def publish(self, *files: Path, keep: bool = True) -> None:
        return None

    def remove(self, rels: list[str]) -> None:
        return None

    def folder(self, rel: str) -> Path:
        return self.root / rel


class Location(ABC):
    """Where a command reads or writes, resolved once (`pipeline.format.stores.location`); `str()` is the
    location as the user spelled it (a store URL less its trailing slash)."""

    noun: ClassVar[str]  # what a folder is called here, for messages: "folder" or "prefix"
    parallel_reads: ClassVar[int]  # reads worth keeping in flight at once (a store answers each after tens of ms)

    @abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self)))

    @abstractmethod
    def join(self, rel: str) -> Location:
        """`rel` (a POSIX path) below this location."""

    @abstractmethod
    def absolute(self) -> Location:
        """The same location, independent of this process's working folder (what another process is given)."""

    @abstractmethod
    def inside(self, other: Location) -> bool:
        """Whether this location is `other` or lies below it."""

    @abstractmethod
    def is_folder(self) -> bool:
        """Whether it can be read as a folder here: an existing local folder; any store prefix."""

    @abstractmethod
    def exists(self, *, folder: bool) -> bool:
        """Whether writing here would replace something: a file (or, for a `folder`, a non-empty folder), or
        any object at or below the store path."""

    @abstractmethod
    def walk(self, skip: Callable[[str], bool]) -> Found:
        """Every file below, unsorted; a name with any part that `skip`s is left out (a skipped folder is not
        entered). ConfigError for a local folder that cannot be listed: it would hide its files."""

    @abstractmethod
    def reading(self, block_size: int = 8 << 20) -> AbstractContextManager[tuple[IO[bytes], int]]:
        """The file or object opened for streaming reads, with its size (local: regular files only,
        `fs.open_regular`; a store object is read in requests of `block_size` bytes)."""

    @abstractmethod
    def fetched(self) -> AbstractContextManager[Path]:
        """A local path holding the file here: itself, or a private download of the object (removed after)."""

    @abstractmethod
    def published(self) -> AbstractContextManager[Path]:
        """A local path to write the file or folder at: itself, or a temp path whose file (or every file below
        it) is uploaded, one upload each, once the block succeeds."""

    @abstractmethod
    def stage(self, kind: str, part: str) -> Stage:
        """The lasting stage of this location on this machine (a store's: `$MMFORGE_CACHE/stage/{kind}/.../{part}`)."""

    @abstractmethod
    def scratch(self, prefix: str) -> AbstractContextManager[Stage]:
        """A stage for the length of a block (a store's: a fresh temp folder, removed after)."""

    @abstractmethod
    def check_writable(self) -> None:
        """ConfigError when the location cannot be written at all (a store's bucket is missing or hidden); a
        local folder is checked when it is made."""

    @abstractmethod
    def local_path(self, refusal: str) -> Path:
        """This location as a path of this machine, for what reads local files only; ConfigError(refusal) on a
        store."""


class LocalPath(Location):
    """A file or folder of this machine."""

    noun = "folder"
    parallel_reads = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def join(self, rel: str) -> LocalPath:
        return LocalPath(self.path / rel)

    def absolute(self) -> LocalPath:
        return LocalPath(self.path.resolve())

    def inside(self, other: Location) -> bool:
        if not isinstance(other, LocalPath):
            return False
        mine, theirs = self.path.resolve(), other.path.resolve()
        return mine == theirs or theirs in mine.parents

    def is_folder(self) -> bool:
        return self.path.is_dir()

    def exists(self, *, folder: bool) -> bool:
        path = self.path
        return path.exists() and (not folder or not path.is_dir() or any(path.iterdir()))

    def walk(self, skip: Callable[[str], bool]) -> Found:
        """Links to folders are followed once (loops cut by device+inode)."""
        seen: set[tuple[int, int]] = set()
        found: Found = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True, onerror=_unreadable):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not skip(d))
            for name in filenames:
                if skip(name):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    fst = os.stat(full)
                except OSError:  # dangling symlink: not a file we can read; still listed so it is accounted for
                    fst = os.lstat(full)
                found.append((Path(full).relative_to(self.path).as_posix(), fst.st_size, fst.st_mtime_ns))
        return found

    def reading(self, block_size: int = 8 << 20) -> AbstractContextManager[tuple[IO[bytes], int]]:
        return fs.open_regular(self.path)

    def fetched(self) -> AbstractContextManager[Path]:
        return nullcontext(self.path)

    def published(self) -> AbstractContextManager[Path]:
        return nullcontext(self.path)

    def stage(self, kind: str, part: str) -> Stage:
        return FolderStage(self.path)

    def scratch(self, prefix: str) -> AbstractContextManager[Stage]:
        return nullcontext(FolderStage(self.path))

    def check_writable(self) -> None:
        return None

    def local_path(self, refusal: str) -> Path:
        return self.path


def _unreadable(err: OSError) -> None:
    """A folder that cannot be listed would hide its files: stop rather than lose them silently."""
    raise ConfigError(f"cannot read folder {err.filename}: {err.strerror}")


def scheme_of(value: str) -> str | None:
    """The URL scheme of `value` (lower case), or None for a plain path."""
    m = _URL.match(value)
    return m[1].lower() if m else None


def _file_path(value: str) -> Path:
    parts = urlsplit(value)
    if parts.netloc not in ("", "localhost"):
        raise LocationError(f"{value!r}: a file:// URL names this machine's files; host {parts.netloc!r} is not it")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise LocationError(f"{value!r}: a file:// URL with a query or fragment; write '?' as %3F and '#' as %23")
    if not parts.path:
        raise LocationError(f"{value!r}: a file:// URL needs a path (file:///absolute/path)")
    return Path(unquote(parts.path))


def protocol_problem(scheme: str, *, in_place: bool = False) -> str | None:
    """Why `scheme://` cannot be used here, in the words a user can act on (None: an installed fsspec
    protocol, and `in_place` says the caller reads and writes stores)."""
    try:
        from fsspec.registry import get_filesystem_class, known_implementations, registry
    except ImportError:  # fsspec absent: no protocol at all is known
        return f"unknown protocol {scheme!r}"
    if scheme not in known_implementations and scheme not in registry:
        return f"unknown protocol {scheme!r} (no fsspec implementation knows it)"
    try:
        get_filesystem_class(scheme)
    except ImportError:
        hint = known_implementations.get(scheme, {}).get("err") or f"install the fsspec driver for {scheme}://"
        return f"the {scheme}:// protocol is not installed here ({hint})"
    if in_place:
        return None
    return (
        f"this option takes a local path, not a {scheme}:// location; copy the file here (or mount the store "
        "with s3fs-fuse, gcsfuse or rclone mount) and pass the local path"
    )


def local_location(value: str | Path) -> Path:
    """`value` as a local path, or LocationError (nothing read or written) when it names another store or has
    a name longer than any file system takes."""
    if isinstance(value, Path):
        return _checked_names(value)
    scheme = scheme_of(value)
    if scheme is None:
        return _checked_names(Path(value))
    if scheme == "file":
        return _checked_names(_file_path(value))
    raise LocationError(f"{value!r}: {protocol_problem(scheme)}")


def _checked_names(path: Path) -> Path:
    """`path`, or LocationError when a part of it is over `fs.NAME_MAX` bytes (every call on it would fail)."""
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > fs.NAME_MAX:
            raise LocationError(
                f"{_short(str(path))}: the name {_short(part)} is {size} bytes; a file or folder name has at most "
                f"{fs.NAME_MAX}"
            )
    return path


def _short(text: str, keep: int = 60) -> str:
    return repr(text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}")
