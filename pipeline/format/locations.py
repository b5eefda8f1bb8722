"""Where a command may read and write: local paths, `file://` URLs, and a clear refusal for everything else.

Every path a command takes (SRC, OUT, --data, --out, --init, --recipe, --config, preview and export outputs)
goes through `local_location` before anything is read or written. Before it, `s3://bucket/out` was taken as
the relative folder `s3:/bucket/out` and a build "succeeded" into it. Now:
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
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

# `scheme:/...` (one slash is a URL too: `s3:/bucket` must not become a folder `s3:`); schemes of two or more
# characters, so a Windows drive letter (`C:/data`) stays a path
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


class LocationError(argparse.ArgumentTypeError, ValueError):
    """A path argument names a location these commands cannot use (argparse and click both report it)."""


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
    """`value` as a local path, or LocationError (nothing read or written) when it names another store."""
    if isinstance(value, Path):
        return value
    scheme = scheme_of(value)
    if scheme is None:
        return Path(value)
    if scheme == "file":
        return _file_path(value)
    raise LocationError(f"{value!r}: {protocol_problem(scheme)}")


def optional_location(value: str | Path | None) -> Path | None:
    return None if value is None else local_location(value)
