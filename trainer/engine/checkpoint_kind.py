"""What a checkpoint is, told without torch: its kind, from the first bytes and the names it holds.

The rules of the five kinds live here (`kind_of`, `timm_layout_problem`), and two readers apply them:
`trainer.engine.checkpoint.read_checkpoint` (torch.load, weights_only) to use a checkpoint, and `peek` here
to check a command's checkpoint argument before torch is imported, so that a file that is not a checkpoint,
or one of the wrong kind, is refused in a fraction of a second.

`peek` reads only the structure. torch.save writes a zip whose `<name>/data.pkl` holds the dicts, names and
config while every tensor's bytes are separate entries; that pickle is read by an unpickler that builds
nothing: every class or function it names is a stand-in that is never imported or called, every storage a
stand-in. A safetensors file's names are in its JSON header. What `peek` cannot tell without torch (a legacy
pickle, an unusually large structure) it leaves to `read_checkpoint`, by answering None.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pipeline.format import fs
from trainer.errors import CheckpointError

Kind = Literal["pretrain-run", "finetune-run", "official-pretrained", "official-finetuned", "timm-export"]
KINDS: dict[Kind, str] = {  # each kind as a sentence names it
    "pretrain-run": "a pretraining checkpoint",
    "finetune-run": "a fine-tuning checkpoint",
    "official-pretrained": "an official MultiMAE pretrained checkpoint",
    "official-finetuned": "an official MultiMAE fine-tuned checkpoint",
    "timm-export": "a timm export",
}
EXPORTABLE: tuple[Kind, ...] = ("pretrain-run", "finetune-run", "official-pretrained", "official-finetuned")
RECONSTRUCTS: tuple[Kind, ...] = ("pretrain-run", "official-pretrained")  # a model with its pretraining decoders
FORMATS = (1, 2)  # the payload formats this code reads
TIMM_FILE = "model.safetensors"  # the tensors of a timm export folder
_PICKLE_LIMIT = 64 << 20  # a structure larger than this (names and config only) is left to torch.load
_SAFETENSORS_HEADER_LIMIT = 100 << 20  # safetensors' own limit on its JSON header


def require_kind(kind: Kind, kinds: tuple[Kind, ...], *, use: str, source: str) -> None:
    """A one-line refusal unless `kind` is one of `kinds`, naming what `use` needs."""
    if kind not in kinds:
        wanted = " or ".join(KINDS[k] for k in kinds)
        raise CheckpointError(f"{source} is {KINDS[kind]}; {use} needs {wanted}")


def kind_of(raw: Any, source: str, is_tensor: Callable[[Any], bool]) -> Kind:
    """The kind of what torch.load gave (or `peek` read, its tensors stand-ins: `is_tensor` tells them): our
    payload has a config, the official layout is a state dict only; anything else is a one-line CheckpointError."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        what = f"a {type(raw).__name__}" if not isinstance(raw, dict) else f"a dict of {sorted(map(str, raw))[:5]}"
        raise CheckpointError(f"{source} is not a checkpoint: it holds {what}, no 'model' state dict")
    wrong = [k for k, v in raw["model"].items() if not isinstance(k, str) or not is_tensor(v)]
    if wrong:
        raise CheckpointError(f"{source} is not a checkpoint: its 'model' is not a state dict ({wrong[0]!r})")
    if "config" not in raw:
        return _official_kind(raw["model"], source)
    fmt, config = raw.get("format", 1), raw["config"]
    if fmt not in FORMATS:
        raise CheckpointError(f"{source}: checkpoint format {fmt!r}; this code reads formats {list(FORMATS)}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its config is a {type(config).__name__}, not a table")
    kind: Kind = "finetune-run" if "task" in config else "pretrain-run"
    if raw.get("kind", kind) != kind:
        raise CheckpointError(f"{source} says it is {raw['kind']!r}, but its config is {KINDS[kind]}'s")
    return kind


def _official_kind(tensors: dict[str, Any], source: str) -> Kind:
    names = list(tensors)
    if not any(n.startswith("input_adapters.") for n in names) or not any(n.startswith("encoder.") for n in names):
        raise CheckpointError(
            f"{source}: unknown layout: a state dict without config whose names are not MultiMAE's "
            f"(no input_adapters.*, encoder.*; it starts {names[:3]})"
        )
    outputs = {n.split(".")[1] for n in names if n.startswith("output_adapters.")}
    heads = [o for o in outputs if f"output_adapters.{o}.out_proj.weight" not in tensors]
    return "official-finetuned" if heads else "official-pretrained"


def timm_layout_problem(names: list[str], source: str) -> str:
    """Why safetensors with these tensor names are not a timm ViT export ("" when they are)."""
    if "patch_embed.proj.weight" in names and any(k.startswith("blocks.") for k in names):
        return ""
    return (
        f"{source}: unknown layout: safetensors without timm ViT names (patch_embed.*, blocks.*; it starts {names[:3]})"
    )


def file_format(head: bytes, size: int, source: str) -> Literal["torch", "safetensors"]:
    """From the first 16 bytes: torch.save's zip (or a legacy pickle), or safetensors (an 8-byte header
    length, then JSON); anything else is refused in one line."""
    if not head:
        raise CheckpointError(f"cannot read checkpoint {source}: the file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    raise CheckpointError(f"cannot read checkpoint {source}: neither a PyTorch file (torch.save) nor safetensors")


def checkpoint_file(path: Path, source: str) -> Path:
    """The file of a checkpoint argument: the path itself, or a timm export folder's model.safetensors."""
    if path.is_dir():
        if not (path / TIMM_FILE).is_file():
            raise CheckpointError(f"{source} is a folder without {TIMM_FILE}: not a checkpoint (timm exports hold one)")
        return path / TIMM_FILE
    return path


def peek(path: Path, source: str | None = None) -> Kind | None:
    """The kind of the checkpoint at `path` (a local file or timm export folder), read without torch; None
    when only torch can tell. A file that is missing, unreadable, truncated or not a checkpoint is a one-line
    CheckpointError, as `read_checkpoint` would say."""
    source = source or str(path)
    path = checkpoint_file(Path(path), source)
    try:
        with fs.open_regular(path) as (f, size):
            head = f.read(16)
            if file_format(head, size, source) == "safetensors":
                names = _safetensors_names(f, size, source)
                problem = timm_layout_problem(names, source)
                if problem:
                    raise CheckpointError(problem)
                return "timm-export"
            if not head.startswith(b"PK\x03\x04"):
                return None  # a legacy (pre-zip) torch file: torch.load reads it
            f.seek(0)
            raw = _zip_structure(f, source)
    except OSError as err:  # missing, unreadable, or a FIFO or device (never opened blocking)
        raise CheckpointError(f"cannot read checkpoint {source}: {err.strerror or err}") from None
    return None if raw is _UNKNOWN else kind_of(raw, source, lambda value: isinstance(value, _StandIn))


_UNKNOWN = object()


def _safetensors_names(f: io.BufferedIOBase | Any, size: int, source: str) -> list[str]:
    f.seek(0)
    length = int.from_bytes(f.read(8), "little")
    if length > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
        raise CheckpointError(f"cannot read checkpoint {source}: truncated or corrupt (safetensors header)")
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"cannot read checkpoint {source}: truncated or corrupt (safetensors header)") from None
    entries = (
        {name: entry for name, entry in header.items() if name != "__metadata__"} if isinstance(header, dict) else None
    )
    ends = [_data_end(entry) for entry in (entries or {}).values()]
    if entries is None or -1 in ends or max(ends, default=0) > size - 8 - length:
        raise CheckpointError(f"cannot read checkpoint {source}: truncated or corrupt (safetensors header)")
    return list(entries)


def _data_end(entry: Any) -> int:
    """Where a safetensors entry's bytes end (its data_offsets); -1 for an entry that is not one."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
        return int(offsets[1])
    return -1


_PICKLE_NAME = re.compile(r"^[^/]+/data\.pkl$")


def _zip_structure(f: Any, source: str) -> Any:
    """The structure torch.save pickled (tensors as stand-ins), or _UNKNOWN when it is too large to read here."""
    try:
        with zipfile.ZipFile(f) as archive:
            pickles = [info for info in archive.infolist() if _PICKLE_NAME.match(info.filename)]
            if len(pickles) != 1:
                raise CheckpointError(f"{source} is not a checkpoint: a zip file without torch.save's data.pkl")
            if pickles[0].file_size > _PICKLE_LIMIT:
                return _UNKNOWN
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {source}: truncated or corrupt ({err})") from None
    try:
        return _StructureOnly(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as err:  # a broken pickle: the unpickler raises many kinds
        raise CheckpointError(
            f"cannot read checkpoint {source}: truncated or corrupt ({type(err).__name__}: {err})"
        ) from None


class _StandIn:
    """Whatever a pickle names (a tensor rebuild, a storage, a dtype, any class): accepted, never built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        return _StandIn()

    def __setstate__(self, state: Any) -> None:
        pass


class _Table(dict):  # type: ignore[type-arg]
    """An OrderedDict of the pickle (state dicts are): a dict that accepts the attributes BUILD sets."""


class _StructureOnly(pickle.Unpickler):
    """Reads torch.save's data.pkl without importing or calling anything it names."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Table
        return _StandIn

    def persistent_load(self, pid: Any) -> Any:
        return _StandIn()
