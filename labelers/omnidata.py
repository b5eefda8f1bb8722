"""Omnidata DPT-Hybrid depth, the labeler of MultiMAE's ImageNet depth maps (relative depth, not inverse).

The weights are not on a hub in transformers form: the recipe's `weights` names a local file in the original
DPT layout (`omnidata_rgb2depth_dpt_hybrid.pth`, or an Omnidata Lightning `.ckpt`), converted at load time by
`labelers.dpt_original`, or a folder written by `mmforge convert-weights`.

License: CC-BY-NC-4.0, as the Omnidata authors publish their DPT-Hybrid models on Hugging Face
(huggingface.co/sashasax/omnidata_normal_dpt_hybrid_384 and the Space
sashasax/omnidata_monocular_depth_dpt_hybrid_384); the training data's EULA (github.com/EPFL-VILAB/omnidata,
LICENSE) allows non-commercial research and educational use only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from labelers.dpt import DPTDepthLabeler
from labelers.registry import register_labeler
from labelers.spec import LabelerSpec
from labelers.weights import WeightsUnavailableError, load_pretrained

if TYPE_CHECKING:
    from transformers import DPTForDepthEstimation

WEIGHTS_FILE = "omnidata_rgb2depth_dpt_hybrid.pth"
WEIGHTS_URLS = (
    f"https://datasets.epfl.ch/vilab/iccv21/weights/{WEIGHTS_FILE}",
    "https://zenodo.org/records/10447888 (omnidata_dpt_depth_v1.ckpt, omnidata_dpt_depth_v2.ckpt; see "
    "github.com/EPFL-VILAB/omnidata omnidata_tools/torch/tools/download_depth_models.sh)",
)
LICENSE = "CC-BY-NC-4.0 (Omnidata DPT-Hybrid weights, EPFL VILAB; non-commercial research use)"


def _how_to(weights: str) -> str:
    return (
        f"omnidata-dpt-hybrid: weights {weights!r} are neither a file nor a converted folder. Download "
        f"{WEIGHTS_FILE} (Omnidata v1 DPT-Hybrid depth, the MultiMAE paper's labeler) from {WEIGHTS_URLS[0]} "
        f'(or the Omnidata release: {WEIGHTS_URLS[1]}), then set `weights = "/path/to/{WEIGHTS_FILE}"` in '
        f"the recipe's [labelers.depth] table. Optionally convert it once with `mmforge convert-weights "
        f"/path/to/{WEIGHTS_FILE} /path/to/folder` and point `weights` at the folder."
    )


def check_omnidata(spec: LabelerSpec) -> None:
    """Fails at once, with download instructions, when the weights file or converted folder is absent."""
    path = Path(spec.weights).expanduser() if spec.weights else None
    if path is None or not (path.is_file() or path.is_dir()):
        raise WeightsUnavailableError(_how_to(spec.weights))


def load_omnidata(weights: str) -> DPTForDepthEstimation:
    """The Omnidata DPT-Hybrid from an original-layout file or a converted folder."""
    path = Path(weights).expanduser()
    from labelers.dpt_original import load_dpt_hybrid_original

    if path.is_dir():
        from transformers import DPTForDepthEstimation

        return load_pretrained(DPTForDepthEstimation, str(path), None)
    return load_dpt_hybrid_original(path)


def _build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> DPTDepthLabeler:
    check_omnidata(spec)
    return DPTDepthLabeler(spec, load_omnidata(spec.weights), device=device, precision=precision)


register_labeler(
    LabelerSpec(
        name="omnidata-dpt-hybrid",
        modality="depth",
        model_class="DPTForDepthEstimation",
        weights=WEIGHTS_FILE,
        license=LICENSE,
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
    ),
    check=check_omnidata,
)(_build)
