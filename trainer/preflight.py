"""What the trainer's commands check before torch is imported, so that a wrong path, device or checkpoint is
one line and exit 2 within a second, not after the seconds torch takes to load.

Each check is the same rule the library applies later (the library stays the authority, and also covers
what only it can see: a store object, the tensors of a checkpoint, CUDA as torch finds it):
- `check_device`: the device's spelling, and CUDA asked for on a machine without the CUDA driver;
- `check_checkpoint`: a local checkpoint argument exists, is one, and is of a kind the command uses
  (`trainer.engine.checkpoint_kind.peek`, which reads names, never tensors, and runs nothing);
- `check_data`: a local dataset folder exists and holds a dataset's documents;
- `check_run_folder`: a local `--out` is one this run may write (the run folder's own ownership check);
- `check_output_file`: a report or figure's folder exists and may be written, and the name is not a folder.
Locations on object stores are checked when they are fetched (their credentials and objects need the network).
"""

from __future__ import annotations

import ctypes.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.format import fs
from pipeline.format.locations import LocalPath
from pipeline.format.stores import Location, location
from pipeline.verify.docs import NotADatasetError, check_documents
from trainer.engine.checkpoint_kind import Kind, peek, require_kind
from trainer.engine.run_folder import RunFolder, check_apart
from trainer.errors import ConfigError, DataError

__all__ = [
    "check_checkpoint",
    "check_data",
    "check_device",
    "check_input",
    "check_output_file",
    "check_run",
    "check_run_folder",
]

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_CUDA_DEVICES = ("/dev/nvidiactl", "/dev/dxg")  # the NVIDIA driver's control device; WSL's GPU device


def check_device(device: str) -> None:
    """auto, cpu, mps, cuda or cuda:N; CUDA refused where no CUDA driver is installed (torch says the rest)."""
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N (or mps)")
    if device.startswith("cuda") and not cuda_driver_present():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")


def cuda_driver_present() -> bool:
    """Whether this machine has a CUDA driver, told without torch: its device node or its library (libcuda).
    Only a certain no is acted on; elsewhere than Linux torch decides."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(node) for node in _CUDA_DEVICES) or ctypes.util.find_library("cuda") is not None


def check_checkpoint(value: str, *kinds: Kind, use: str) -> None:
    """A local checkpoint argument (a file or timm export folder) that exists, is a checkpoint and, when
    `kinds` are given, is one of them; a one-line CheckpointError otherwise."""
    where = location(value)
    if isinstance(where, LocalPath):
        kind = peek(where.path, value)
        if kind is not None and kinds:
            require_kind(kind, kinds, use=use, source=value)


def check_data(value: str, flag: str = "--data") -> None:
    """A local dataset folder that exists and holds a dataset's documents (what `load_dataset` reads first)."""
    where = location(value)
    if not isinstance(where, LocalPath):
        return
    if not where.is_folder():
        raise DataError(f"data folder not found: {value}" if flag == "--data" else f"{flag} {value}: no such folder")
    try:
        check_documents(where.path)
    except NotADatasetError as err:
        raise DataError(f"{flag}: {err}") from None
    except OSError as err:
        raise DataError(f"{flag}: cannot read the dataset {value}: {err.strerror or err}") from None


def check_input(value: str, what: str) -> None:
    """A local folder to read that exists; `what` says what the command takes there."""
    where = location(value)
    if isinstance(where, LocalPath) and not where.is_folder():
        raise DataError(f"{value}: no such folder ({what})")


def check_run_folder(out: Location, data: Location, kind: Kind) -> None:
    """`--out` may take this run: not overlapping its data, and new, empty or this kind's run folder (the
    checks `run_folder.claimed` makes again under the lock)."""
    if not isinstance(out, LocalPath):
        return
    check_apart(out, data)
    if out.path.exists() and not out.path.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run folder: choose a new folder")
    RunFolder(out, 0).check_owned(kind)


def check_output_file(path: Path | None, flag: str) -> None:
    """A file a command will write: its folder exists and may be written, and the name is not a folder."""
    if path is None:
        return
    path = Path(path)
    problem = fs.output_file_problem(path)
    if problem:
        raise ConfigError(f"{flag} {path}{problem}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder {path.parent} cannot be written")


def check_run(kind: str, values: Mapping[str, Any]) -> None:
    """pretrain / finetune / probe's arguments (by option name, as parsed), checked in the order a user reads
    them: the device, the data, the run folder, the initial weights, the validation split."""
    check_device(str(values["device"]))
    check_data(values["data"])
    run_kind: Kind = "pretrain-run" if kind == "pretrain" else "finetune-run"
    check_run_folder(location(values["out"]), location(values["data"]), run_kind)
    if values.get("init") is not None:
        check_checkpoint(values["init"], use="--init")
    if values.get("val") is not None:
        check_data(values["val"], "--val")
