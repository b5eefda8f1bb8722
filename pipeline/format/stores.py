"""Object stores: fsspec URLs (`s3://`, `gs://`, `az://`: `OBJECT_STORES`) as sources, datasets and run folders.

Nothing is ever written in place on a store. Files are made locally, exactly as for a local folder, and
then published: one PUT of the whole object (an upload that dies midway leaves no visible object: a single
PUT is all or nothing, and an unfinished multipart upload is never listed), the done marker only after
the object it vouches for. Documents are read back the same way: `mirror` downloads what a command needs
into a local stage folder, so every check that runs on a local dataset runs unchanged on its copy.

Credentials and endpoints come from each store's own environment and config files (for S3: AWS_* variables,
~/.aws/config, instance roles; `AWS_ENDPOINT_URL` or fsspec's `FSSPEC_S3_ENDPOINT_URL` for a private
endpoint), never from this project's files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.format import fs
from pipeline.format.locations import LocationError, local_location, protocol_problem, scheme_of
from pipeline.format.schema import ConfigError

# object stores whose single PUT (or completed multipart upload) makes an object appear whole or not at all
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


class RemoteURL(str):
    """A location on an object store, as the user spelled it less a trailing slash (`s3://bucket/prefix`)."""


Location = Path | RemoteURL


def location(value: str | Path) -> Location:
    """A command-line location: a local path, or a URL of an installed fsspec protocol (LocationError else)."""
    if isinstance(value, RemoteURL):  # already checked
        return value
    if not is_url(value):
        return local_location(value)
    open_store(str(value))  # the protocol must be installed and the URL well formed
    return RemoteURL(str(value).rstrip("/"))


@dataclass(frozen=True)
class Entry:
    size: int
    version: str  # what changes when the object does (ETag, generation or mtime)


@dataclass(frozen=True)
class Store:
    """One prefix of one store; `rel` names are POSIX paths below it."""

    url: str
    fs: Any  # fsspec.AbstractFileSystem
    root: str  # the store's own path of the prefix (bucket/prefix)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def listing(self) -> dict[str, Entry]:
        """Every object below the prefix (fresh: no cached listing), by relative name."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for key, info in found.items():
            rel = key[len(self.root) :].lstrip("/") if key.startswith(self.root) else key
            if info.get("type", "file") == "directory" or not rel:
                continue
            version = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("mtime") or ""
            out[rel] = Entry(size=int(info.get("size") or 0), version=str(version))
        return out

    def read(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def put_file(self, local: Path, rel: str) -> None:
        """One upload of a finished local file (a single PUT, or a multipart upload visible only once done)."""
        self.fs.put_file(str(local), self.path(rel))

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def get_file(self, rel: str, local: Path) -> None:
        """Download to `local` atomically (a killed download leaves no file at `local`)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with fs.atomic_open(local) as f, self.fs.open(self.path(rel), "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def remove(self, rels: list[str]) -> None:
        if rels:
            self.fs.rm([self.path(r) for r in rels])


def open_store(url: str) -> Store:
    """The store a URL names; LocationError (nothing touched) for an unknown or uninstalled protocol."""
    scheme = scheme_of(url)
    if scheme is None:
        raise LocationError(f"{url!r} is not a URL")
    problem = protocol_problem(scheme, in_place=True)
    if problem:
        raise LocationError(f"{url!r}: {problem}")
    if scheme not in OBJECT_STORES:
        raise LocationError(
            f"{url!r}: {scheme}:// is not an object store with all-or-nothing uploads; these commands read and "
            f"write {', '.join(s + '://' for s in OBJECT_STORES)} (or a local path)"
        )
    from fsspec.core import url_to_fs

    clean = url.rstrip("/")
    try:
        filesystem, root = url_to_fs(clean)
    except (ImportError, ValueError) as err:
        raise LocationError(f"{url!r}: {err}") from None
    root = root.rstrip("/")
    if not root or root == filesystem.root_marker:
        raise LocationError(f"{url!r}: name a bucket and a prefix, e.g. {scheme}://bucket/datasets/name")
    return Store(url=clean, fs=filesystem, root=root)


def _stage_root() -> Path:
    cache = os.environ.get("MMFORGE_CACHE") or os.path.join(Path.home(), ".cache", "multimae-forge")
    root = Path(cache) / "stage"
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_writable(store: Store) -> None:
    """ConfigError unless the store's bucket (the first part of its path) exists and can be listed."""
    bucket = store.root.split("/", 1)[0]
    try:
        found = store.fs.exists(bucket)
    except OSError as err:
        raise ConfigError(f"cannot reach {store.url}: {err}") from None
    if not found:
        raise ConfigError(f"{store.url}: the bucket {bucket!r} does not exist (or these credentials cannot see it)")


def stage_dir(url: str, kind: str) -> Path:
    """The local folder that stages `url` for this machine (`$MMFORGE_CACHE/stage/{kind}/...`)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    tail = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.rsplit("/", 1)[-1])[:40]
    return _stage_root() / kind / f"{tail}-{digest}"


def mirror(store: Store, stage: Path, want: Callable[[str], bool], listing: dict[str, Entry] | None = None) -> None:
    """Make `stage` hold exactly the store's objects that `want` (by relative name; names with `..` or empty
    parts never); the others stay on the store. Files already staged are re-downloaded all the same: a stage
    is a copy, never trusted over the store."""
    listing = store.listing() if listing is None else listing
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for rel in sorted(listing):
        parts = rel.split("/")
        if want(rel) and "" not in parts and ".." not in parts:
            store.get_file(rel, stage / rel)


def join(base: str | Path, rel: str) -> str | Path:
    """`rel` (POSIX) below a local folder or a store URL."""
    return f"{str(base).rstrip('/')}/{rel}" if is_url(base) else Path(base) / rel


def is_url(value: str | Path) -> bool:
    if isinstance(value, Path):
        return False
    scheme = scheme_of(value)
    return scheme is not None and scheme != "file"


def exists(where: Location, *, folder: bool) -> bool:
    """Whether writing `where` would replace something: a file (or, for a `folder`, a non-empty folder), or
    any object at or below the store path."""
    if is_url(where):
        store = open_store(str(where))
        return bool(store.listing()) or bool(store.fs.exists(store.root))
    path = Path(where)
    return path.exists() and (not folder or not path.is_dir() or any(path.iterdir()))


@contextmanager
def fetched(where: Location) -> Iterator[Path]:
    """A local path holding the file `where`: itself, or a private download of the object (removed after)."""
    if not is_url(where):
        yield Path(where)
        return
    store = open_store(str(where))
    name = store.root.rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="mmforge-in-", dir=_stage_root()) as tmp:
        local = Path(tmp) / name
        try:
            with fs.atomic_open(local) as f, store.fs.open(store.root, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        except OSError as err:
            raise ConfigError(f"cannot read {where}: {err.strerror or err}") from None
        yield local


@contextmanager
def published(where: Location) -> Iterator[Path]:
    """A local path to write the file or folder `where` at: itself, or a temp path whose file (or every file
    below it) is uploaded, one upload each, once the block succeeds."""
    if not is_url(where):
        yield Path(where)
        return
    store = open_store(str(where))
    with tempfile.TemporaryDirectory(prefix="mmforge-out-", dir=_stage_root()) as tmp:
        local = Path(tmp) / store.root.rsplit("/", 1)[-1]
        yield local
        if local.is_dir():
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                store.put_file(path, path.relative_to(local).as_posix())
        elif local.is_file():
            store.fs.put_file(str(local), store.root)


@contextmanager
def staged_documents(url: str, want: Callable[[str], bool]) -> Iterator[tuple[Path, dict[str, int]]]:
    """A private local copy of the objects of a store prefix that `want` (a dataset's documents; removed
    afterwards), and the name and size of every other object, which stays on the store:
    `(folder, {"shards/x.tar": size, ...})`."""
    store = open_store(url)
    with tempfile.TemporaryDirectory(prefix="mmforge-docs-", dir=_stage_root()) as tmp:
        listing = store.listing()
        mirror(store, Path(tmp) / "dataset", want, listing)
        yield Path(tmp) / "dataset", {rel: e.size for rel, e in listing.items() if not want(rel)}


@contextmanager
def open_input(path: str | Path, block_size: int = 8 << 20) -> Iterator[tuple[IO[bytes], int]]:
    """A file or object opened for streaming reads, with its size: a local path (regular files only, see
    `fs.open_regular`) or a store URL."""
    if not is_url(path):
        with fs.open_regular(local_location(path)) as (f, size):
            yield f, size
        return
    store = open_store(str(path))
    with store.fs.open(store.root, "rb", block_size=block_size) as f:
        yield f, int(f.size)
