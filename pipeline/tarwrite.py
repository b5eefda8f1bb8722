"""Deterministic tar writing: fixed mtime/uid/gid/mode, USTAR headers, members in the order given."""

from __future__ import annotations

import io
import tarfile
from typing import IO

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: the same input gives byte-identical shards


class SampleTarWriter:
    """Writes samples (key -> members) to an open binary file; members of a sample stay adjacent."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or not key:
            raise ValueError(f"sample key must be non-empty and dot-free, got {key!r}")
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()
