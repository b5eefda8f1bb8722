"""The scenes teachers as data: their tasks, shipped files, training reports and labeler specs, without torch.

`labelers.teacher` holds the networks and registers these specs with their factory; `labelers.builtin` lists
them with the other built-in labelers, so a recipe is checked against them before torch is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labelers.classes import class_table
from labelers.spec import LabelerSpec

SHIPPED = "data/teachers"  # inside the `labelers` package
SIZE = 96
MEAN = STD = (0.5, 0.5, 0.5)  # pixels / 255 -> [-1, 1]
CLASSES = "scenes-primitives"
DEPTH_RANGE_M = (0.05, 20.0)  # the renderer's near and far clip planes
LICENSE = "Apache-2.0 (trained by multimae-forge on its own rendered scenes)"
TRAIN_MODULE = "labelers.teacher_train"


@dataclass(frozen=True, kw_only=True)
class TeacherNetConfig:
    """A U-Net: a thin full-resolution branch, a stride-2 stem, then one level per width (max-pool, two
    convs), decoded back up with skip connections; `out_channels` maps at the input's size."""

    out_channels: int
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    fine: int = 8

    def __post_init__(self) -> None:
        if self.out_channels < 1 or self.fine < 1 or len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"bad teacher network config {self}")


@dataclass(frozen=True, kw_only=True)
class TeacherTask:
    """One teacher: the labeler it becomes, its modality and output kind, and the network's output maps."""

    name: str
    labeler: str
    modality: str
    output: str
    out_channels: int

    @property
    def file(self) -> str:
        return f"{self.labeler}.safetensors"

    def net_config(self) -> TeacherNetConfig:
        return TeacherNetConfig(out_channels=self.out_channels)


TASKS = {
    "depth": TeacherTask(
        name="depth", labeler="scenes-depth-teacher", modality="depth", output="depth", out_channels=1
    ),
    "semseg": TeacherTask(
        name="semseg",
        labeler="scenes-semseg-teacher",
        modality="semseg",
        output="classes",
        out_channels=len(class_table(CLASSES)),
    ),
}


def shipped_path(file: str) -> Path:
    """Where a shipped teacher file lies (it may be absent: check with `.is_file()`)."""
    return Path(str(resources.files("labelers").joinpath(SHIPPED, file)))


def weights_path(weights: str) -> Path:
    """A spec's `weights`: a bare file name is a shipped teacher; anything else is a path."""
    if weights and Path(weights).name == weights and not Path(weights).is_absolute():
        return shipped_path(weights)
    return Path(weights).expanduser()


def shipped_report(task: TeacherTask) -> dict[str, Any]:
    """The training report shipped beside the weights ({} when there is none)."""
    path = shipped_path(f"{task.labeler}.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _quality_line(task: TeacherTask, report: dict[str, Any]) -> str:
    if not report:
        return "No training report is shipped: quality unknown."
    t, b = report.get("teacher", {}), report.get("baseline", {})
    if task.name == "depth":
        scores = (
            f"delta1 {t.get('delta1')} %, absrel {t.get('absrel')} "
            f"(mean-depth baseline: delta1 {b.get('delta1')} %, absrel {b.get('absrel')})"
        )
    else:
        scores = f"mIoU {t.get('miou')} % (majority-class baseline: mIoU {b.get('miou')} %)"
    return (
        f"Held-out quality of the shipped weights on {report.get('eval_scenes')} rendered scenes "
        f"(split {report.get('eval_split')!r}), against exact ground truth: {scores}."
    )


def teacher_spec(task: TeacherTask) -> LabelerSpec:
    """The spec of a shipped teacher, its report (quality, command, scenes) in `notes` and `extra`."""
    report = shipped_report(task)
    what = "metric depth in metres" if task.name == "depth" else f"classes of the {CLASSES} table"
    extra: dict[str, Any] = {"shipped_weights": f"labelers/{SHIPPED}/{task.file}"}
    if report:
        extra["shipped_report"] = report
    return LabelerSpec(
        name=task.labeler,
        modality=task.modality,
        model_class="labelers.teacher.TeacherNet",
        weights=task.file,
        license=LICENSE,
        size=SIZE,
        geometry="square",
        mean=MEAN,
        std=STD,
        output=task.output,
        num_classes=task.out_channels if task.output == "classes" else None,
        classes=CLASSES if task.output == "classes" else None,
        notes=(
            f"Small U-Net teacher ({what}) trained by `python -m {TRAIN_MODULE}` on rendered scenes of a split it "
            f"never labels; fp32. {_quality_line(task, report)}"
        ),
        extra=extra,
    )
