"""The built-in labelers' specs, declared as data: what a recipe is checked against before torch is imported.

Each labeler's module (`labelers.dpt`, `mask2former`, `omnidata`, `teacher`) registers its spec here with the
factory that builds its network; the registry (`labelers.registry.resolve_spec`) reads a built-in name's spec
from `SPECS` without importing those modules, and loads them (and any plugin) when a labeler is built, checked
for weights, or a name is not built in.
"""

from __future__ import annotations

import dataclasses

from labelers.spec import LabelerSpec
from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
from labelers.teacher_spec import TASKS, teacher_spec

# ------------------------------------------------------------------------------------ DPT (MiDaS): labelers.dpt

_MIDAS_LICENSE = "MIT (MiDaS/DPT weights, Intel ISL)"
DPT_HYBRID_MIDAS = LabelerSpec(
    name="dpt-hybrid-midas",
    modality="depth",
    model_class="DPTForDepthEstimation",
    weights="Intel/dpt-hybrid-midas",
    revision="main",
    license=_MIDAS_LICENSE,
    size=384,
    geometry="short_side",
    output="inverse_depth",
    notes="MiDaS v3 DPT-Hybrid: relative inverse depth (disparity-like).",
)

DPT_LARGE = dataclasses.replace(
    DPT_HYBRID_MIDAS,
    name="dpt-large",
    weights="Intel/dpt-large",
    notes="MiDaS v3 DPT-Large: relative inverse depth.",
)

DPT_SMOKE = LabelerSpec(
    name="dpt-smoke",
    modality="depth",
    model_class="DPTForDepthEstimation",
    weights="",
    license="n/a (random weights)",
    size=64,
    geometry="short_side",
    min_side=32,
    max_side=128,
    output="depth",
    meaningless=True,
    notes="Tiny random-weight DPT-hybrid of the real class: MEANINGLESS labels, for demos and tests only.",
)


# ------------------------------------------------------------------------- Mask2Former: labelers.mask2former

COCO_PANOPTIC = LabelerSpec(
    name="mask2former-swin-small-coco-panoptic",
    modality="semseg",
    model_class="Mask2FormerForUniversalSegmentation",
    weights="facebook/mask2former-swin-small-coco-panoptic",
    revision="main",
    license="CC-BY-NC-4.0 (Mask2Former model zoo weights)",
    size=384,
    geometry="short_side",
    max_side=1024,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output="classes",
    num_classes=133,
    classes="coco-panoptic-133",
    notes="COCO panoptic, 133 classes (80 things + 53 stuff) in Mask2Former's contiguous order.",
)
ADE_SEMANTIC = dataclasses.replace(
    COCO_PANOPTIC,
    name="mask2former-swin-small-ade-semantic",
    weights="facebook/mask2former-swin-small-ade-semantic",
    size=512,
    max_side=2048,
    num_classes=150,
    classes="ade20k-150",
    notes="ADE20K semantic, 150 classes (wall ... flag) in the benchmark's order.",
)


def smoke_of(spec: LabelerSpec, name: str) -> LabelerSpec:
    """A tiny random-weight model of `spec`'s class and classes: MEANINGLESS labels, for demos and tests."""
    return dataclasses.replace(
        spec,
        name=name,
        weights="",
        revision=None,
        license="n/a (random weights)",
        size=64,
        min_side=32,
        max_side=128,
        meaningless=True,
        notes=f"Tiny random-weight Mask2Former with {spec.name}'s classes: MEANINGLESS labels, for demos and tests.",
    )


MASK2FORMER_SMOKE = smoke_of(COCO_PANOPTIC, "mask2former-smoke")
MASK2FORMER_SMOKE_ADE = smoke_of(ADE_SEMANTIC, "mask2former-smoke-ade")


# ------------------------------------------------------------------------------ Omnidata: labelers.omnidata

WEIGHTS_FILE = "omnidata_rgb2depth_dpt_hybrid.pth"
NORMAL_WEIGHTS_FILE = "omnidata_dpt_normal_v2.ckpt"
WEIGHTS_URLS = (
    f"https://datasets.epfl.ch/vilab/iccv21/weights/{WEIGHTS_FILE}",
    "https://zenodo.org/records/10447888 (omnidata_dpt_depth_v1.ckpt, omnidata_dpt_depth_v2.ckpt; see "
    "github.com/EPFL-VILAB/omnidata omnidata_tools/torch/tools/download_depth_models.sh)",
)
NORMAL_WEIGHTS_URLS = (
    f"https://zenodo.org/records/10447888/files/{NORMAL_WEIGHTS_FILE}",
    "https://datasets.epfl.ch/vilab/iccv21/weights/omnidata_rgb2normal_dpt_hybrid.pth (v1; see "
    "github.com/EPFL-VILAB/omnidata omnidata_tools/torch/tools/download_surface_normal_models.sh)",
)
OMNIDATA_LICENSE = "CC-BY-NC-4.0 (Omnidata DPT-Hybrid weights, EPFL VILAB; non-commercial research use)"

OMNIDATA_DEPTH = LabelerSpec(
    name="omnidata-dpt-hybrid",
    modality="depth",
    model_class="DPTForDepthEstimation",
    weights=WEIGHTS_FILE,
    license=OMNIDATA_LICENSE,
    size=384,
    geometry="multiple_of_32",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    output="depth",
    notes=(
        "Omnidata DPT-Hybrid (ViT-B/16 + R50 stem), trained at 384 on [-1, 1] inputs; relative depth, "
        "not inverse (unlike MiDaS). Original-layout weights, converted at load time "
        f"(labelers.dpt_original). Weights: {WEIGHTS_URLS[0]}"
    ),
)
OMNIDATA_NORMAL = LabelerSpec(
    name="omnidata-dpt-hybrid-normal",
    modality="normal",
    model_class="DPTForSurfaceNormals",
    weights=NORMAL_WEIGHTS_FILE,
    license=OMNIDATA_LICENSE,
    size=384,
    geometry="multiple_of_32",
    mean=(0.0, 0.0, 0.0),  # Omnidata's normal network reads plain [0, 1] pixels (its depth network [-1, 1])
    std=(1.0, 1.0, 1.0),
    output="normal",
    notes=(
        "Omnidata DPT-Hybrid surface normals (the depth architecture with a 3-channel head), trained at 384 on "
        "[0, 1] inputs; output clamped to [0, 1] = [-1, 1] as Omnidata does, then scaled to unit length. "
        f"Original-layout weights (v2 .ckpt or v1 .pth), converted at load time. Weights: {NORMAL_WEIGHTS_URLS[0]}"
    ),
)
OMNIDATA_NORMAL_SMOKE = dataclasses.replace(
    OMNIDATA_NORMAL,
    name="omnidata-normal-smoke",
    weights="",
    license="n/a (random weights)",
    size=64,
    min_side=32,
    max_side=128,
    meaningless=True,
    notes="Tiny random-weight DPT-hybrid normal network of the real class: MEANINGLESS labels, for demos, tests.",
)


# ------------------------------------------------------------------------ the scenes teachers: labelers.teacher

TEACHERS = {task.labeler: teacher_spec(task) for task in TASKS.values()}

SPECS: dict[str, LabelerSpec] = {
    spec.name: spec
    for spec in (
        DPT_HYBRID_MIDAS,
        DPT_LARGE,
        DPT_SMOKE,
        COCO_PANOPTIC,
        ADE_SEMANTIC,
        MASK2FORMER_SMOKE,
        MASK2FORMER_SMOKE_ADE,
        OMNIDATA_DEPTH,
        OMNIDATA_NORMAL,
        OMNIDATA_NORMAL_SMOKE,
        *TEACHERS.values(),
    )
}
