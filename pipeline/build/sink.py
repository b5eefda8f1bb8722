"""The shard sink: the one way a shard reaches the dataset folder (builder and synthetic datasets alike).

Samples stream into a hidden temp file beside the shard's final name, hashed and counted as they are
written, as a deterministic tar (USTAR headers, fixed mtime/uid/gid/mode, members in the order given, members
of a sample adjacent); on success the file is fsynced and renamed to `shards/{shard}.tar`, and only then may
the stats marker be written (`mark_done`), whose presence says the shard is complete. A killed writer leaves
only a temp file, never a tar that looks finished. Both are written in OUT's stage and published from it
(`Stage.publish`: one upload each to an object store, the local copy dropped; nothing to do on a folder).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from contextlib import ExitStack
from types import TracebackType
from typing import IO

from pipeline.format import fs
from pipeline.format.contract import DatasetPaths, ShardStats, write_doc
from pipeline.format.locations import Stage

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: the same input gives byte-identical shards


class _HashingFile:
    """File wrapper that hashes and counts what tarfile writes."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size


class ShardSink:
    """`with ShardSink(paths, name) as sink: sink.add(key, members)`; then `sink.mark_done(stats)`."""

    def __init__(self, paths: DatasetPaths, shard: str, stage: Stage) -> None:
        self.paths, self.shard, self.stage = paths, shard, stage
        self.samples, self.bytes, self.sha256 = 0, 0, ""
        self._stack = ExitStack()
        self._published = False

    def __enter__(self) -> ShardSink:
        f = self._stack.enter_context(fs.atomic_open(self.paths.shard_tar(self.shard)))
        self._hash = _HashingFile(f)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[call-overload]
        return self

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: members in the order given, named `{key}.{suffix}`."""
        if "." in key or not key:
            raise ValueError(f"sample key must be non-empty and dot-free, got {key!r}")
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self._tar.close()
                self.bytes, self.sha256 = self._hash.size, self._hash.sha.hexdigest()
        except BaseException as close_err:
            self._stack.__exit__(type(close_err), close_err, close_err.__traceback__)  # the temp file goes
            raise
        self._stack.__exit__(kind, err, tb)  # renames on success, removes the temp file otherwise
        if kind is None:
            self.stage.publish(self.paths.shard_tar(self.shard), keep=False)
        self._published = kind is None

    def mark_done(self, stats: ShardStats) -> None:
        """Write the stats marker of the published shard; its bytes and sha256 must be the sink's."""
        if not self._published or (stats.bytes, stats.sha256) != (self.bytes, self.sha256):
            raise RuntimeError(f"shard {self.shard}: stats marker for a shard that was not published as described")
        marker = self.paths.shard_stats(self.shard)
        write_doc(marker, stats)
        self.stage.publish(marker, keep=False)
