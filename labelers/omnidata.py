"""Omnidata DPT-Hybrid depth (the labeler of MultiMAE's ImageNet depth maps: relative depth, not inverse) and
Omnidata DPT-Hybrid surface normals (3 channels, the normals 4M labels with).

The weights are not on a hub in transformers form: the recipe's `weights` names a local file in the original
DPT layout (`omnidata_rgb2depth_dpt_hybrid.pth`, `omnidata_rgb2normal_dpt_hybrid.pth`, or an Omnidata
Lightning `.ckpt`), converted at load time by `labelers.dpt_original`, or a folder written by
`mmforge convert-weights`.

License: CC-BY-NC-4.0, as the Omnidata authors publish their DPT-Hybrid models on Hugging Face
(huggingface.co/sashasax/omnidata_normal_dpt_hybrid_384 and the Space
sashasax/omnidata_monocular_depth_dpt_hybrid_384); the training data's EULA (github.com/EPFL-VILAB/omnidata,
LICENSE) allows non-commercial research and educational use only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from labelers import builtin
from labelers.builtin import NORMAL_WEIGHTS_FILE, NORMAL_WEIGHTS_URLS, WEIGHTS_FILE, WEIGHTS_URLS
from labelers.dpt import DPTDepthLabeler
from labelers.registry import register_labeler
from labelers.smoke import materialize, tiny_dpt_config
from labelers.spec import LabelerSpec
from labelers.weights import WeightsUnavailableError, load_pretrained

if TYPE_CHECKING:
    from transformers import DPTForDepthEstimation

_CHANNELS = {"depth": 1, "normal": 3}  # the head's output maps for each labeler output
_WEIGHTS = {"depth": (WEIGHTS_FILE, WEIGHTS_URLS), "normal": (NORMAL_WEIGHTS_FILE, NORMAL_WEIGHTS_URLS)}


def _how_to(spec: LabelerSpec) -> str:
    file, urls = _WEIGHTS[spec.output]
    return (
        f"{spec.name}: weights {spec.weights!r} are neither a file nor a converted folder. Download "
        f"{file} (Omnidata DPT-Hybrid {spec.output}) from {urls[0]} (or: {urls[1]}), then set "
        f'`weights = "/path/to/{file}"` in the recipe\'s [labelers.{spec.modality}] table. Optionally convert '
        f"it once with `mmforge convert-weights /path/to/{file} /path/to/folder` and point `weights` at the folder."
    )


def check_omnidata(spec: LabelerSpec) -> None:
    """Fails at once, with download instructions, when the weights file or converted folder is absent."""
    path = Path(spec.weights).expanduser() if spec.weights else None
    if path is None or not (path.is_file() or path.is_dir()):
        raise WeightsUnavailableError(_how_to(spec))


def load_omnidata(weights: str, out_channels: int = 1) -> DPTForDepthEstimation:
    """An Omnidata DPT-Hybrid (depth: 1 output map, normals: 3) from an original-layout file or a converted
    folder; a checkpoint with another head is refused (strict shapes)."""
    from labelers.dpt_original import CheckpointLayoutError, dpt_model_class, load_dpt_hybrid_original

    path = Path(weights).expanduser()
    if not path.is_dir():
        return load_dpt_hybrid_original(path, out_channels)
    config = path / "config.json"
    found = int(json.loads(config.read_text()).get("num_output_channels", 1)) if config.is_file() else 1
    if found != out_channels:
        raise CheckpointLayoutError(f"{path}: a DPT with {found} output map(s); this labeler needs {out_channels}")
    return load_pretrained(dpt_model_class(out_channels), str(path), None)


def _build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> DPTDepthLabeler:
    check_omnidata(spec)
    model = load_omnidata(spec.weights, _CHANNELS[spec.output])
    return DPTDepthLabeler(spec, model, device=device, precision=precision)


def _build_smoke(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> DPTDepthLabeler:
    from labelers.dpt_normal_model import DPTForSurfaceNormals

    def tiny() -> DPTForSurfaceNormals:
        config = tiny_dpt_config(True)
        config.num_output_channels = 3
        model = DPTForSurfaceNormals(config)
        # centre the random head's output on 0.5 (= a zero component) so the smoke normals vary instead of
        # sitting at the ReLU's floor
        final = model.head.head[4]
        assert isinstance(final, torch.nn.Conv2d) and final.bias is not None
        torch.nn.init.constant_(final.bias, 0.5)
        return model

    folder = spec.weights or str(materialize("dpt-hybrid-normal-smoke", tiny))
    return DPTDepthLabeler(spec, load_omnidata(folder, 3), device=device, precision=precision)


register_labeler(builtin.OMNIDATA_DEPTH, check=check_omnidata)(_build)
register_labeler(builtin.OMNIDATA_NORMAL, check=check_omnidata)(_build)
register_labeler(builtin.OMNIDATA_NORMAL_SMOKE, check=lambda spec: None)(_build_smoke)
