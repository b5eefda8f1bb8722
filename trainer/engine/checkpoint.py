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
from typing import IO, Any, Literal

import torch
from safetensors import safe_open
from torch import Tensor

from pipeline.format import fs, stores
from pipeline.format.schema import ConfigError, load
from trainer.config import FinetuneConfig, ModelConfig, PretrainConfig, config_to_dict
from trainer.errors import CheckpointError

Kind = Literal["pretrain-run", "finetune-run", "official-pretrained", "official-finetuned", "timm-export"]
KINDS: dict[Kind, str] = {  # each kind as a sentence names it
    "pretrain-run": "a pretraining checkpoint",
    "finetune-run": "a fine-tuning checkpoint",
    "official-pretrained": "an official MultiMAE pretrained checkpoint",
    "official-finetuned": "an official MultiMAE fine-tuned checkpoint",
    "timm-export": "a timm export",
}
FORMAT = 2
FORMATS = (1, 2)  # the payload formats this code reads
RESUME_KEYS = ("epoch", "micro", "world_size", "optimizer", "scaler", "ranks", "nonfinite")
LAST = "checkpoint-last.pt"
TIMM_FILE = "model.safetensors"  # the tensors of a timm export folder
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
        if self.kind not in kinds:
            wanted = " or ".join(KINDS[k] for k in kinds)
            raise CheckpointError(f"{self.source} is {KINDS[self.kind]}; {use} needs {wanted}")
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
    """torch.save of a plain payload through the project's one atomic writer (temp, fsync, rename)."""
    assert_plain(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fs.atomic_open(path) as f:
        torch.save(payload, f)


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint-last.pt atomically, then checkpoint-<step>.pt as a hard link to it (or a copy), then prune
    old ones. The last one first: a kill in between leaves a run that resumes, never numbered checkpoints without
    checkpoint-last.pt (a folder that `trainer.engine.run_folder` refuses to start afresh in)."""
    last, path = Path(run_dir) / LAST, Path(run_dir) / f"checkpoint-{step}.pt"
    atomic_save(payload, last)
    _link(last, path)
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
    if path.is_dir():
        if not (path / TIMM_FILE).is_file():
            raise CheckpointError(f"{source} is a folder without {TIMM_FILE}: not a checkpoint (timm exports hold one)")
        path = path / TIMM_FILE
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
    if not head:
        raise CheckpointError(f"cannot read checkpoint {source}: the file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save: a zip (or a legacy pickle)
        return False
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return True
    raise CheckpointError(f"cannot read checkpoint {source}: neither a PyTorch file (torch.save) nor safetensors")


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
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        what = f"a {type(raw).__name__}" if not isinstance(raw, dict) else f"a dict of {sorted(map(str, raw))[:5]}"
        raise CheckpointError(f"{source} is not a checkpoint: it holds {what}, no 'model' state dict")
    tensors = raw["model"]
    wrong = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if wrong:
        raise CheckpointError(f"{source} is not a checkpoint: its 'model' is not a state dict ({wrong[0]!r})")
    if "config" in raw:
        return _ours(raw, dict(tensors), source)
    return _official(raw, dict(tensors), source)


def _ours(raw: dict[str, Any], tensors: dict[str, Tensor], source: str) -> Checkpoint:
    fmt, config = raw.get("format", 1), raw["config"]
    if fmt not in FORMATS:
        raise CheckpointError(f"{source}: checkpoint format {fmt!r}; this code reads formats {list(FORMATS)}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its config is a {type(config).__name__}, not a table")
    kind: Kind = "finetune-run" if "task" in config else "pretrain-run"
    if raw.get("kind", kind) != kind:
        raise CheckpointError(f"{source} says it is {raw['kind']!r}, but its config is {KINDS[kind]}'s")
    step = raw.get("step")
    return Checkpoint(
        kind=kind,
        config=_typed_config(kind, config, source),
        tensors=tensors,
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        extra={k: v for k, v in raw.items() if k not in ("format", "kind", "step", "config", "model")},
        source=source,
    )


def _typed_config(kind: Kind, raw: dict[str, Any], source: str) -> PretrainConfig | FinetuneConfig:
    try:
        return load(FinetuneConfig, raw) if kind == "finetune-run" else load(PretrainConfig, raw)
    except ConfigError as err:
        raise CheckpointError(f"{source}: its config does not load ({'; '.join(err.problems)})") from None


def _official(raw: dict[str, Any], tensors: dict[str, Tensor], source: str) -> Checkpoint:
    names = list(tensors)
    if not any(n.startswith("input_adapters.") for n in names) or not any(n.startswith("encoder.") for n in names):
        raise CheckpointError(
            f"{source}: unknown layout: a state dict without config whose names are not MultiMAE's "
            f"(no input_adapters.*, encoder.*; it starts {names[:3]})"
        )
    outputs = {n.split(".")[1] for n in names if n.startswith("output_adapters.")}
    heads = [o for o in outputs if f"output_adapters.{o}.out_proj.weight" not in tensors]
    return Checkpoint(
        kind="official-finetuned" if heads else "official-pretrained",
        config=None,
        tensors=tensors,
        extra={k: v for k, v in raw.items() if k != "model"},
        source=source,
    )


def _timm_export(path: Path, source: str) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error type for a bad header or short data
        raise CheckpointError(f"cannot read checkpoint {source}: {_failure(err)}") from None
    if "patch_embed.proj.weight" not in tensors or not any(k.startswith("blocks.") for k in tensors):
        raise CheckpointError(
            f"{source}: unknown layout: safetensors without timm ViT names (patch_embed.*, blocks.*; it starts "
            f"{list(tensors)[:3]})"
        )
    return Checkpoint(kind="timm-export", config=None, tensors=tensors, extra={"metadata": metadata}, source=source)
