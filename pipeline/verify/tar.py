"""A strict, streaming reader of one shard tar for the verifier.

CPython's `tarfile` stops silently when an archive is cut between members, so the verifier walks the
512-byte blocks itself: every header must parse (checksum included), every member's data must be present,
the archive must end with two zero blocks followed only by zero padding, and nothing else may follow. The
whole file is hashed while it is read, whatever its state.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


@dataclass(frozen=True)
class TarMember:
    name: str
    offset: int  # of the member's header block
    size: int
    data: bytes | None  # None unless the caller asked for member data
    regular: bool = True


@dataclass
class TarProblem:
    kind: str  # "truncated", "bad_header", "trailing_data", "bad_member_type"
    member: str | None
    reason: str


@dataclass
class TarScan:
    """What a scan found besides the members it yielded: the file's sha256, its size and its problems."""

    sha256: str = ""
    bytes: int = 0
    problems: list[TarProblem] = field(default_factory=list)


class _HashingReader:
    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.sha, self.pos = f, hashlib.sha256(), 0

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Read and hash n bytes without keeping them; returns how many were there."""
        got = 0
        while got < n:
            chunk = self.read(min(n - got, 1 << 20))
            if not chunk:
                break
            got += len(chunk)
        return got

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _check_end(reader: _HashingReader, at: int, scan: TarScan) -> None:
    """After the first zero block: a second one must follow, then only zero padding."""
    second = reader.read(BLOCK)
    if second != _ZERO:
        reason = f"only one end-of-archive zero block at byte {at}; the archive was cut or overwritten"
        scan.problems.append(TarProblem("truncated", None, reason))
    while chunk := reader.read(1 << 20):
        if chunk.count(0) != len(chunk):
            reason = f"non-zero bytes after the end-of-archive blocks (after byte {at})"
            scan.problems.append(TarProblem("trailing_data", None, reason))
            break


def _header(block: bytes, at: int, scan: TarScan) -> tarfile.TarInfo | None:
    if len(block) == 0:
        reason = f"archive ends at byte {at}, at a member boundary, without the end-of-archive blocks"
        scan.problems.append(TarProblem("truncated", None, reason))
        return None
    if len(block) < BLOCK:
        reason = f"archive ends inside a header at byte {at + len(block)}"
        scan.problems.append(TarProblem("truncated", None, reason))
        return None
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as err:
        scan.problems.append(TarProblem("bad_header", None, f"unreadable header at byte {at}: {err}"))
        return None


def _member_data(reader: _HashingReader, info: tarfile.TarInfo, keep: bool, scan: TarScan) -> tuple[bool, bytes]:
    """Read a member's data and padding; False when the file ends before the member does."""
    padded = _padded(info.size)
    data = reader.read(info.size) if keep else b""
    got = len(data) if keep else reader.skip(info.size)
    got += reader.skip(padded - info.size) if got == info.size else 0
    if got < padded:
        have = min(got, info.size)
        reason = f"member declares {info.size} bytes, the file ends after {have} of them"
        if have == info.size:
            reason = f"the file ends inside the padding after member data ({got} of {padded} bytes)"
        scan.problems.append(TarProblem("truncated", info.name, reason))
        return False, b""
    return True, data


def scan_tar(f: IO[bytes], scan: TarScan, keep_data: bool | Callable[[str], bool] = False) -> Iterator[TarMember]:
    """Yield the members of a tar in order, recording problems in `scan`; hashes the whole file.
    `keep_data`: keep every member's bytes, none, or those whose name the predicate accepts."""
    reader = _HashingReader(f)
    wanted = keep_data if callable(keep_data) else (lambda _name: bool(keep_data))
    try:
        while True:
            at = reader.pos
            block = reader.read(BLOCK)
            if block == _ZERO:
                _check_end(reader, at, scan)
                return
            info = _header(block, at, scan)
            if info is None:
                return
            regular = info.type in _REGULAR
            if not regular:
                reason = f"member type {info.type!r} is not a regular file"
                scan.problems.append(TarProblem("bad_member_type", info.name, reason))
            keep = regular and wanted(info.name)
            complete, data = _member_data(reader, info, keep, scan)
            if not complete:
                return
            yield TarMember(info.name, at, info.size, data if keep else None, regular)
    finally:
        reader.drain()
        scan.sha256, scan.bytes = reader.sha.hexdigest(), reader.pos
