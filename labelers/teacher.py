"""Teacher labelers: small depth and segmentation networks trained on rendered scenes, weights shipped in the repo.

Contract:
- `scenes-depth-teacher` (output `depth`, metres) and `scenes-semseg-teacher` (output `classes`, the
  `scenes-primitives` table: floor, box, sphere, cylinder, capsule) are compact U-Nets (`TeacherNet`, about
  200 k parameters, fp32 compute, also on GPUs) that read a 96 x 96 image normalised to [-1, 1].
- They are trained by `python -m labelers.teacher_train` on a labelled scenes split (`teacher`) that is disjoint
  from every split they later label (scenes are drawn per split name), and scored against exact ground truth on
  a held-out split (`teacher-val`). The score, the training command and the scenes' seed live in the report
  JSON beside the weights and reach manifest.json through the spec's `notes` and `extra`.
- `weights` is either the bare file name of a shipped teacher (labelers/data/teachers/, found through
  importlib.resources) or a path to a `.safetensors` file written by `labelers.teacher_train`. A missing or
  unreadable file is a WeightsUnavailableError in one line; nothing is ever downloaded.
- Depth is predicted as log metres (`depth_metres` maps the network's output to metres, clamped to the
  renderer's clip range); class scores are the network's logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelers import builtin
from labelers.registry import register_labeler
from labelers.spec import LabelerSpec
from labelers.teacher_spec import (
    DEPTH_RANGE_M,
    MEAN,
    STD,
    TASKS,
    TRAIN_MODULE,
    TeacherNetConfig,
    TeacherTask,
    weights_path,
)
from labelers.torch_labeler import TorchLabeler
from labelers.weights import WeightsUnavailableError

FORMAT = "multimae-forge teacher"
FORMAT_VERSION = "1"
HEADER_KEY = "multimae_forge_teacher"  # the one safetensors metadata entry: the header as JSON


# ---------------------------------------------------------------------------------------------------- network


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TeacherNet(nn.Module):
    """(B, 3, H, W) normalised pixels -> (B, out_channels, H, W); H and W divisible by 2 ** len(widths)."""

    def __init__(self, cfg: TeacherNetConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.cfg = cfg
        self.fine = _conv(3, cfg.fine)
        self.stem = _conv(3, w[0], stride=2)
        self.down = nn.ModuleList(
            nn.Sequential(_conv(w[i], w[i + 1]), _conv(w[i + 1], w[i + 1])) for i in range(len(w) - 1)
        )
        self.up = nn.ModuleList(_conv(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.up_fine = _conv(w[0] + cfg.fine, w[0])
        self.head = nn.Conv2d(w[0], cfg.out_channels, 1)

    def forward_encoder(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 1 (thin), 2, 4, ... 2 ** len(widths)."""
        feats = [self.fine(x), self.stem(x)]
        for level in self.down:
            feats.append(level(F.max_pool2d(feats[-1], 2)))
        return feats

    def forward_decoder(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip([*self.up, self.up_fine], reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_decoder(self.forward_encoder(x))


def depth_metres(out: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) log-depth output -> (B, h, w) metres within the renderer's clip range."""
    lo, hi = DEPTH_RANGE_M
    return out[:, 0].float().clamp(min=torch.tensor(lo).log().item(), max=torch.tensor(hi).log().item()).exp()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float pixels as the labelers feed them (mean/std of the specs)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


# ---------------------------------------------------------------------------------------------------- tasks


# ---------------------------------------------------------------------------------------------------- weights


def read_header(path: Path) -> dict[str, Any]:
    """The header of a teacher weights file (format, version, task, config); WeightsUnavailableError (one line)
    when it is not one."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise WeightsUnavailableError(
            f"teacher weights {str(path)!r} are missing: train them with `python -m {TRAIN_MODULE} SCENES_ROOT "
            f'--task depth|semseg --out DIR` and set `weights = "DIR/<labeler>.safetensors"` in the recipe\'s '
            f"[labelers.<modality>] table"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(HEADER_KEY, "{}"))
    except (OSError, SafetensorError, ValueError) as err:
        raise WeightsUnavailableError(f"teacher weights {str(path)!r} are unreadable: {err}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise WeightsUnavailableError(f"teacher weights {str(path)!r} are not a {FORMAT} v{FORMAT_VERSION} file")
    return header


def check_teacher(spec: LabelerSpec) -> None:
    """Raise WeightsUnavailableError when `spec.weights` is not a readable teacher file of this labeler's task."""
    header = read_header(weights_path(spec.weights))
    task = _task_of(spec)
    if header.get("task") != task.name:
        raise WeightsUnavailableError(
            f"{spec.name}: weights {spec.weights!r} hold a {header.get('task')!r} teacher, not {task.name!r}"
        )


def save_teacher(net: TeacherNet, task: TeacherTask, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `net`'s state (floats as `dtype`) with its config to `path` (the caller renames it into place).
    One metadata entry holds the header as sorted JSON, so the same weights give the same bytes."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, "task": task.name, "config": dataclasses.asdict(net.cfg)}
    save_file(state, str(path), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})


def load_teacher(path: Path, task: TeacherTask) -> TeacherNet:
    """A teacher network (fp32, eval mode) from a file written by `save_teacher`; strict names and shapes."""
    from safetensors.torch import load_file

    header = read_header(path)
    if header.get("task") != task.name:
        raise WeightsUnavailableError(
            f"teacher weights {str(path)!r} hold a {header.get('task')!r} teacher, not {task.name!r}"
        )
    try:
        raw = header["config"]
        cfg = TeacherNetConfig(
            out_channels=int(raw["out_channels"]), widths=tuple(raw["widths"]), fine=int(raw["fine"])
        )
        net = TeacherNet(cfg)
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise WeightsUnavailableError(f"teacher weights {str(path)!r} do not fit the network: {err}") from err
    if cfg.out_channels != task.out_channels:
        raise WeightsUnavailableError(
            f"teacher weights {str(path)!r} predict {cfg.out_channels} maps, not {task.out_channels}"
        )
    return net.eval()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- labelers


class TeacherLabeler(TorchLabeler):
    """Runs in fp32 whatever the build's precision (the networks are small; bf16 only costs accuracy)."""

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class DepthTeacherLabeler(TeacherLabeler):
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return depth_metres(self.model(pixels.float()))


class SemsegTeacherLabeler(TeacherLabeler):
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.float()).float()


_LABELERS: dict[str, type[TeacherLabeler]] = {"depth": DepthTeacherLabeler, "semseg": SemsegTeacherLabeler}


def _task_of(spec: LabelerSpec) -> TeacherTask:
    return next(t for t in TASKS.values() if t.labeler == spec.name)


def _build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> TeacherLabeler:
    task = _task_of(spec)
    check_teacher(spec)
    net = load_teacher(weights_path(spec.weights), task)
    return _LABELERS[task.name](spec, net, device=device, precision=precision)


# ---------------------------------------------------------------------------------------------------- specs


for _task in TASKS.values():
    register_labeler(builtin.TEACHERS[_task.labeler], check=check_teacher)(_build)
