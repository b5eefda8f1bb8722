"""Object stores: fsspec URLs (`s3://`, `gs://`, `az://`: `OBJECT_STORES`) as sources, datasets and run folders,
and `location`, which resolves what the user typed into a `Location` once: a `LocalPath` or a `StorePath`.

Nothing is ever written in place on a store. Files are made locally, exactly as for a local folder, and
then published: one PUT of the whole object (an upload that dies midway leaves no visible object: a single
PUT is all or nothing, and an unfinished multipart upload is never listed), the done marker only after
the object it vouches for. Documents are read back the same way: `mirror` downloads what a command needs
into a local stage folder, so every check that runs on a local dataset runs unchanged on its copy. Both are
what `StorePath` and its `StoreStage` do behind the operations every `Location` has.

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
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.format import fs
from pipeline.format.locations import (
    Entry,
    Found,
    LocalPath,
    Location,
    LocationError,
    Stage,
    local_location,
    protocol_problem,
    scheme_of,
)
from pipeline.format.schema import ConfigError

__all__ = ["OBJECT_STORES", "Entry", "LocalPath", "Location", "Stage", "Store", "StorePath", "location", "open_input"]

# object stores whose single PUT (or completed multipart upload) makes an object appear whole or not at all
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def location(value: str | Path | Location) -> Location:
    """A command-line location: a local path, or a URL of an installed fsspec protocol (LocationError else).
    A `Location` is returned as it is: resolve once, then pass the object on."""
    if isinstance(value, Location):
        return value
    if isinstance(value, Path) or scheme_of(value) in (None, "file"):
        return LocalPath(local_location(value))
    return StorePath(open_store(value))  # the protocol must be installed and the URL well formed


@contextmanager
def open_input(path: str | Path | Location, block_size: int = 8 << 20) -> Iterator[tuple[IO[bytes], int]]:
    """A file or object opened for streaming reads, with its size (`Location.reading` of `location(path)`)."""
    with location(path).reading(block_size) as opened:
        yield opened


class StoreUnreachableError(ConfigError, ConnectionError):
    """A store's endpoint that cannot be reached: a ConfigError (every command says it in one line, exit 2) and
    a ConnectionError (an OSError: what handles a store it cannot read or write handles this one too)."""


def _connection_failure(err: BaseException) -> bool:
    """Whether a store client's exception says the endpoint was never reached (as opposed to an answer from
    it): botocore's connection errors are not OSErrors (gcsfs's aiohttp ones are, and pass as they are)."""
    try:
        from botocore.exceptions import ConnectionError as ClientConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    return isinstance(err, ClientConnectionError | HTTPClientError)


class StoreCredentialsError(ConfigError, PermissionError):
    """No credentials were found for a store: a ConfigError (one line, exit 2) and a PermissionError (an OSError,
    as a refused request already is)."""


def _credentials_missing(err: BaseException) -> bool:
    """Whether a store client's exception says it found no credentials to sign with (botocore's are not
    OSErrors; a request refused by the store is a PermissionError from s3fs already)."""
    try:
        from botocore.exceptions import CredentialRetrievalError, NoCredentialsError, PartialCredentialsError
    except ImportError:
        return False
    return isinstance(err, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError)


_WHERE_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an instance role",
}


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Around calls to a store: a connection that fails becomes a StoreUnreachableError naming the store, and
    credentials that are missing a StoreCredentialsError saying where they are read from."""
    try:
        yield
    except Exception as err:
        why = " ".join(str(err).split())
        if _credentials_missing(err):
            where = _WHERE_CREDENTIALS.get(url.split("://", 1)[0], "the store's own environment and config files")
            raise StoreCredentialsError(f"no credentials for the store of {url} ({why}): set {where}") from None
        if not _connection_failure(err):
            raise
        raise StoreUnreachableError(f"cannot reach the store of {url} ({why})") from None


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

    def below(self, rel: str) -> Store:
        return Store(url=self.url_of(rel), fs=self.fs, root=self.path(rel))

    def listing(self) -> dict[str, Entry]:
        """Every object below the prefix (fresh: no cached listing), by relative name."""
        self.fs.invalidate_cache()
        try:
            with reaching(self.url):
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
        with reaching(self.url):
            return bytes(self.fs.cat_file(self.path(rel)))

    def put_file(self, local: Path, rel: str) -> None:
        """One upload of a finished local file (a single PUT, or a multipart upload visible only once done)."""
        with reaching(self.url):
            self.fs.put_file(str(local), self.path(rel))

    def put_bytes(self, rel: str, data: bytes) -> None:
        with reaching(self.url):
            self.fs.pipe_file(self.path(rel), data)

    def get_file(self, rel: str, local: Path) -> None:
        """Download to `local` atomically (a killed download leaves no file at `local`)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        with reaching(self.url), fs.atomic_open(local) as f, self.fs.open(self.path(rel), "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def remove(self, rels: list[str]) -> None:
        if rels:
            with reaching(self.url):
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


class StorePath(Location):
    """A prefix or an object of an object store; sent to another process as its URL (resolved again there)."""

    noun = "prefix"
    parallel_reads = 16  # one object read after another would leave a request's latency between every two

    def __init__(self, store: Store) -> None:
        self.store = store

    def __str__(self) -> str:
        return self.store.url

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return location, (self.store.url,)

    def join(self, rel: str) -> StorePath:
        return StorePath(self.store.below(rel))

    def absolute(self) -> StorePath:
        return self

    def inside(self, other: Location) -> bool:
        return isinstance(other, StorePath) and (str(self) == str(other) or str(self).startswith(f"{other}/"))

    def is_folder(self) -> bool:
        return True  # a store has no folders: every prefix can be listed

    def exists(self, *, folder: bool) -> bool:
        if self.store.listing():
            return True
        with reaching(self.store.url):
            return bool(self.store.fs.exists(self.store.root))

    def walk(self, skip: Callable[[str], bool]) -> Found:
        return [
            (rel, e.size, e.version)
            for rel, e in self.store.listing().items()
            if not any(skip(part) for part in rel.split("/"))
        ]

    @contextmanager
    def reading(self, block_size: int = 8 << 20) -> Iterator[tuple[IO[bytes], int]]:
        with reaching(self.store.url), self.store.fs.open(self.store.root, "rb", block_size=block_size) as f:
            yield f, int(f.size)

    @contextmanager
    def fetched(self) -> Iterator[Path]:
        store = self.store
        with tempfile.TemporaryDirectory(prefix="mmforge-in-", dir=_stage_root()) as tmp:
            local = Path(tmp) / _name(store)
            try:
                with reaching(store.url), fs.atomic_open(local) as f, store.fs.open(store.root, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            except OSError as err:
                raise ConfigError(f"cannot read {self}: {err.strerror or err}") from None
            yield local

    @contextmanager
    def published(self) -> Iterator[Path]:
        store = self.store
        with tempfile.TemporaryDirectory(prefix="mmforge-out-", dir=_stage_root()) as tmp:
            local = Path(tmp) / _name(store)
            yield local
            if local.is_dir():
                for path in sorted(p for p in local.rglob("*") if p.is_file()):
                    store.put_file(path, path.relative_to(local).as_posix())
            elif local.is_file():
                with reaching(store.url):
                    store.fs.put_file(str(local), store.root)

    def stage(self, kind: str, part: str) -> Stage:
        home = stage_dir(self.store.url, kind)
        return StoreStage(self.store, home / part, lock_root=home)

    def scratch(self, prefix: str) -> AbstractContextManager[Stage]:
        return _scratch(self.store, prefix)

    def check_writable(self) -> None:
        check_writable(self.store)

    def local_path(self, refusal: str) -> Path:
        raise ConfigError(refusal)


class StoreStage(Stage):
    """A copy of a store prefix on this machine: documents fetched into it, finished files published from it."""

    def __init__(self, store: Store, root: Path, *, lock_root: Path) -> None:
        self.store, self.root, self.lock_root = store, root, lock_root
        self.published_to = store.url

    def listing(self) -> dict[str, Entry]:
        return self.store.listing()

    def fetch(self, want: Callable[[str], bool], listing: dict[str, Entry]) -> None:
        mirror(self.store, self.root, want, listing)

    def publish(self, *files: Path, keep: bool = True) -> None:
        for path in files:
            try:
                self.store.put_file(path, path.relative_to(self.root).as_posix())
            finally:
                if not keep:
                    path.unlink(missing_ok=True)

    def remove(self, rels: list[str]) -> None:
        self.store.remove(rels)

    def folder(self, rel: str) -> Path:
        made = self.root / rel
        made.mkdir(parents=True, exist_ok=True)
        return made


@contextmanager
def _scratch(store: Store, prefix: str) -> Iterator[Stage]:
    with tempfile.TemporaryDirectory(prefix=prefix, dir=_stage_root()) as tmp:
        root = Path(tmp) / "copy"
        root.mkdir()
        yield StoreStage(store, root, lock_root=Path(tmp))


def _name(store: Store) -> str:
    return store.root.rsplit("/", 1)[-1]


def _stage_root() -> Path:
    cache = os.environ.get("MMFORGE_CACHE") or os.path.join(Path.home(), ".cache", "multimae-forge")
    root = Path(cache) / "stage"
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_writable(store: Store) -> None:
    """ConfigError unless the store's bucket (the first part of its path) exists and can be listed."""
    bucket = store.root.split("/", 1)[0]
    try:
        with reaching(store.url):
            found = store.fs.exists(bucket)  # s3fs answers False for any failure, an unreachable endpoint too
            if not found:
                _probe(store, bucket)
    except StoreUnreachableError:
        raise
    except OSError as err:
        raise ConfigError(f"cannot reach {store.url}: {err}") from None
    if not found:
        raise ConfigError(f"{store.url}: the bucket {bucket!r} does not exist (or these credentials cannot see it)")


def _probe(store: Store, bucket: str) -> None:
    """A call that raises what `exists` swallows: an endpoint that cannot be reached. Any answer (no such
    bucket, access denied) is left to the caller's "does not exist"."""
    with suppress(OSError):
        store.fs.ls(bucket)


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
