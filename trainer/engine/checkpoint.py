"""Checkpoints: plain dicts of tensors and Python scalars, written atomically, read with weights_only=True.

A run folder holds `checkpoint-<step>.pt` (the last `keep_last` of them) and `checkpoint-last.pt`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.format import fs
from trainer.errors import CheckpointError

LAST = "checkpoint-last.pt"
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pt$")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


def assert_plain(value: Any, where: str = "checkpoint") -> None:
    """Refuse anything but dicts, lists, tuples, tensors and Python scalars (no numpy, no Namespace)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert_plain(key, f"{where} key")
            assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    elif type(value) not in _PLAIN and not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {type(value).__module__}.{type(value).__name__} is not a plain value")


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save through the project's one atomic writer (temp file, fsync, rename, folder fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with fs.atomic_open(path) as f:
        torch.save(payload, f)


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint-<step>.pt, point checkpoint-last.pt at it (hard link or copy), prune old ones."""
    assert_plain(payload)
    path = Path(run_dir) / f"checkpoint-{step}.pt"
    atomic_save(payload, path)
    _replace_last(path)
    for old in numbered_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def _replace_last(path: Path) -> None:
    tmp = fs.temp_name(path.parent / LAST)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here: a copy, written atomically
        atomic_save(torch.load(path, map_location="cpu", weights_only=True), path.parent / LAST)
        return
    os.replace(tmp, path.parent / LAST)


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-<step>.pt files of a run folder, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*.pt") if (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a weights-only checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} is not a trainer checkpoint")
    return payload
