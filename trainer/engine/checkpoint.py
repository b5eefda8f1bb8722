"""Checkpoints: one payload written, one reader for every checkpoint a command is given.

Written (`payload`, format 2; plain dicts of tensors and Python scalars, `torch.save` through the atomic writer):

    {"format": 2, "kind": "pretrain-run" | "finetune-run", "step": int,
     "config": the run's resolved config (plain dict), "model": the state dict (official MultiMAE names),
     # run checkpoints, to resume (`checkpoint-<step>.pt`, `checkpoint-last.pt`): RESUME_KEYS
     "epoch", "micro", "world_size", "optimizer", "scaler", "ranks" (per rank: RNG states, loader cursors),
     "nonfinite", "run" (the run's record: its dataset's fingerprint, schedule changes: trainer.engine.resume),
     # the best checkpoint of a fine-tuning run (`checkpoint-best.pt`):
     "metrics": {name: value}}

A run folder holds `checkpoint-<step>.pt` (the last `keep_last` of them) and `checkpoint-last.pt`.

Read (`read_checkpoint`: `torch.load(weights_only=True)` or safetensors, nothing else), recognised from the
bytes and keys, never from the file name, as a typed `Checkpoint` of one kind:
- `pretrain-run`, `finetune-run`: our payload, format 2 or format 1 (what earlier code wrote: the same keys
  without "kind"; its best checkpoint without the resume state); a config with a `task` is fine-tuning's.
- `official-pretrained`, `official-finetuned`: `{"model": state_dict}` in the official MultiMAE names, no
  config (the shape is ViT-B: `ModelConfig()`); fine-tuned when an output adapter is a task head (no
  `out_proj`, the last linear of every pretraining decoder).
- `timm-export`: safetensors in timm ViT names (`mmforge export --format timm`'s folder, or the file).
Anything else, a truncated file included, is a `CheckpointError` of one line; a command refuses a kind it
cannot use with `Checkpoint.require`.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from torch import Tensor

from pipeline.format import fs, stores
from pipeline.format.outputs import LAST
from pipeline.format.schema import ConfigError, load
from trainer.config import FinetuneConfig, ModelConfig, PretrainConfig, config_to_dict
from trainer.engine.checkpoint_kind import (
    Kind,
    checkpoint_file,
    file_format,
    kind_of,
    require_kind,
    timm_layout_problem,
)
from trainer.errors import CheckpointError

FORMAT = 2
RESUME_KEYS = ("epoch", "micro", "world_size", "optimizer", "scaler", "ranks", "nonfinite")
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pt$")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """What a checkpoint file holds, whichever of the five kinds it is."""

    kind: Kind
    config: PretrainConfig | FinetuneConfig | None  # ours; None for official checkpoints and timm exports
    tensors: dict[str, Tensor]  # the model's state dict: official MultiMAE names (a timm export: timm's)
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the resume state, best metrics, safetensors metadata
    source: str = ""  # where it was read, as messages name it

    @property
    def model_config(self) -> ModelConfig:
        """The model's shape: its config's, else ViT-B (official checkpoints carry no config)."""
        return self.config.model if self.config is not None else ModelConfig()

    @property
    def resumable(self) -> bool:
        """A run checkpoint with everything a run continues from (a best checkpoint has only the model)."""
        return all(key in self.extra for key in RESUME_KEYS)

    def require(self, *kinds: Kind, use: str) -> Checkpoint:
        """This checkpoint if it is one of `kinds`, else a one-line refusal naming what `use` needs."""
        require_kind(self.kind, kinds, use=use, source=self.source)
        return self


def run_kind(config: PretrainConfig | FinetuneConfig) -> Kind:
    """The kind of checkpoint a run with `config` writes."""
    return "finetune-run" if isinstance(config, FinetuneConfig) else "pretrain-run"


# ---------------------------------------------------------------------------------------------- writing


def payload(
    config: PretrainConfig | FinetuneConfig, *, step: int, model: dict[str, Tensor], **extra: Any
) -> dict[str, Any]:
    """The one checkpoint payload (format 2, see above); `extra`: the resume state, "run" and/or "metrics"."""
    unknown = sorted(set(extra) - {*RESUME_KEYS, "run", "metrics"})
    if unknown:
        raise TypeError(f"not a checkpoint entry: {unknown}")
    head = {"format": FORMAT, "kind": run_kind(config), "step": step, "config": config_to_dict(config)}
    return {**head, "model": model, **extra}


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
    """torch.save of a plain payload through the project's one atomic writer (temp, fsync, rename). A write
    that fails (a full disk, a folder that went read-only) leaves any earlier file at `path` as it was and is a
    one-line CheckpointError."""
    assert_plain(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with fs.atomic_open(path) as f:
            torch.save(payload, f)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or err}") from None


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint-last.pt atomically, then checkpoint-<step>.pt as a hard link to it (or a copy), then prune
    old ones. The last one first: a kill in between leaves a run that resumes, never numbered checkpoints without
    checkpoint-last.pt (a folder that `trainer.engine.run_folder` refuses to start afresh in). A failed write is
    a one-line CheckpointError: checkpoint-last.pt then still holds the checkpoint before (atomic_save)."""
    last, path = Path(run_dir) / LAST, Path(run_dir) / f"checkpoint-{step}.pt"
    try:
        atomic_save(payload, last)
    except CheckpointError as err:
        raise CheckpointError(f"{err} ({LAST}, if any, still holds the checkpoint before; resume from it)") from None
    try:
        _link(last, path)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror or err} ({LAST} holds step {step})") from None
    for old in numbered_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def _link(src: Path, dst: Path) -> None:
    tmp = fs.temp_name(dst)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here: a copy of the bytes, written atomically
        with src.open("rb") as f, fs.atomic_open(dst) as out:
            shutil.copyfileobj(f, out, 1 << 20)
        return
    os.replace(tmp, dst)


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-<step>.pt files of a run folder, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*.pt") if (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


# ---------------------------------------------------------------------------------------------- reading


def read_checkpoint(where: str | Path) -> Checkpoint:
    """The checkpoint at `where` (a file, a timm export folder, or an object on a store), typed; one-line
    CheckpointError for anything that is not one of the five kinds."""
    with stores.location(where).fetched() as local:  # a file here is itself; an object, a private download
        return _read(local, str(where))


def _read(path: Path, source: str) -> Checkpoint:
    path = checkpoint_file(path, source)
    try:
        with fs.open_regular(path) as (f, size):
            if _is_safetensors(f, size, source):
                return _timm_export(path, source)
            raw = _torch_load(f, source)
    except OSError as err:  # missing, unreadable, or a FIFO or device (never opened blocking)
        raise CheckpointError(f"cannot read checkpoint {source}: {err.strerror or err}") from None
    return from_payload(raw, source)


def _is_safetensors(f: IO[bytes], size: int, source: str) -> bool:
    """From the first bytes: safetensors (8-byte header length, then JSON) or torch.save's zip or pickle."""
    head = f.read(16)
    f.seek(0)
    return file_format(head, size, source) == "safetensors"


def _torch_load(f: IO[bytes], source: str) -> Any:
    try:
        with warnings.catch_warnings():  # a pickle not from torch.save: refused below, in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"cannot read checkpoint {source}: it holds objects other than tensors and plain values, which "
                f"are never unpickled here (weights_only=True: {_weights_only_reason(str(err))})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {source}: {_failure(err)}") from None
    except Exception as err:  # a truncated zip, a broken pickle: torch raises many kinds
        raise CheckpointError(f"cannot read checkpoint {source}: {_failure(err)}") from None


def _weights_only_reason(text: str) -> str:
    """The one line of torch's weights_only refusal that names what was refused."""
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if marker else []
    return first_sentence(lines[0]) if lines else "refused"


def _failure(err: BaseException) -> str:
    text = first_sentence(str(err)) or "no message"
    return f"truncated or corrupt ({type(err).__name__}: {text})"


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of a library's message, on one line (torch's messages run to paragraphs)."""
    flat = " ".join(text.split())
    sentence = re.split(r"(?<=[a-z0-9)])\. ", flat, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def from_payload(raw: Any, source: str) -> Checkpoint:
    """What `torch.load` gave, typed: our payload (it has a config) or the official layout (a state dict only)."""
    kind = kind_of(raw, source, lambda value: isinstance(value, Tensor))  # the rules `peek` applies too
    tensors = raw["model"]
    if kind not in ("pretrain-run", "finetune-run"):  # the official layout: a state dict, no config
        extra = {k: v for k, v in raw.items() if k != "model"}
        return Checkpoint(kind=kind, config=None, tensors=dict(tensors), extra=extra, source=source)
    step = raw.get("step")
    return Checkpoint(
        kind=kind,
        config=_typed_config(kind, raw["config"], source),
        tensors=dict(tensors),
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        extra={k: v for k, v in raw.items() if k not in ("format", "kind", "step", "config", "model")},
        source=source,
    )


def _typed_config(kind: Kind, raw: dict[str, Any], source: str) -> PretrainConfig | FinetuneConfig:
    try:
        return load(FinetuneConfig, raw) if kind == "finetune-run" else load(PretrainConfig, raw)
    except ConfigError as err:
        raise CheckpointError(f"{source}: its config does not load ({'; '.join(err.problems)})") from None


def _timm_export(path: Path, source: str) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error type for a bad header or short data
        raise CheckpointError(f"cannot read checkpoint {source}: {_failure(err)}") from None
    problem = timm_layout_problem(list(tensors), source)
    if problem:
        raise CheckpointError(problem)
    return Checkpoint(kind="timm-export", config=None, tensors=tensors, extra={"metadata": metadata}, source=source)
