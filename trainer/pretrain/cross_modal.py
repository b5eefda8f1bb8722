"""Cross-modal prediction: what a pretrained MultiMAE's decoders say about depth and classes from RGB alone.

Every rgb token is visible and no depth or semseg token is (the other inputs are zeros, fully masked); the
depth and semseg decoders' outputs are scored over a whole labelled split against its targets, beside the
trivial baselines that need no model. With `keep` (visible tokens per input, e.g. 12 of rgb, depth and
semseg each, at random positions drawn per sample from `seed`) the split's depth and classes are inputs too,
read as pretraining reads them (depth standardised per sample, classes at the semseg stride), and only the
masked patches are scored: how well the decoders fill in what the visible tokens leave out.

- depth: the decoder predicts the per-sample standardised depth (the pretraining target: 10-90 % trimmed
  mean and std), so it has no metric scale. As relative-depth benchmarks do, each image's prediction is
  aligned to its metric target by least squares (scale and shift fitted on the image's valid pixels, target
  > 0), then delta1 (% of valid pixels with max(p/t, t/p) < 1.25) and AbsRel are summed over the split. The
  baseline is the best constant per image (its valid pixels' mean depth), which is exactly what the same
  alignment makes of a flat prediction: the alignment cannot make a flat map score above it.
- semseg: the decoder's logits (at the semseg map's resolution) are upsampled bilinearly to the target's
  size; mIoU over the classes present in the split (a confusion matrix summed over the split, the ignore id
  left out), beside the majority class of the split's labelled pixels predicted everywhere. Scored only
  when the model's classes are the target's (a model pretrained on another class table has no mapping).

    from trainer.pretrain.cross_modal import cross_modal_scores
    scores = cross_modal_scores(Path("run/checkpoint-last.pt"), Path("ds-test"))
    print(scores.table())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from labelers.standards import IGNORE_ID
from pipeline.format.codecs import CODECS
from pipeline.format.stores import Location
from trainer.config import ModelConfig
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.errors import ConfigError, DataError
from trainer.model.masking import masked_pixels, random_mask
from trainer.model.modalities import MODALITIES, standardize_depth_batch
from trainer.model.multimae import MultiMAE
from trainer.transfer.config import FinetuneConfig, TaskConfig
from trainer.transfer.finetune import eval_batches, num_classes_of
from trainer.transfer.metrics import DepthMetrics, SegmentationMetrics


@dataclass(frozen=True, kw_only=True)
class CrossModalScores:
    """Scores over one split (percentages; AbsRel a fraction); None where a task was not scored."""

    samples: int
    depth: dict[str, float] | None = None  # delta1, absrel of the aligned prediction
    depth_baseline: dict[str, float] | None = None  # the same of the per-image mean depth
    semseg: dict[str, float] | None = None  # miou, pixel_acc
    semseg_baseline: dict[str, float] | None = None  # the majority class everywhere
    notes: list[str] = field(default_factory=list)
    visible: dict[str, int] | None = None  # keep: visible tokens per input (only masked patches scored)

    def table(self) -> str:
        if self.visible is None:
            rows = [f"cross-modal prediction from rgb alone, {self.samples} samples:"]
        else:
            shown = ", ".join(f"{n}={k}" for n, k in self.visible.items())
            rows = [f"prediction of the masked patches with {shown} tokens visible, {self.samples} samples:"]
        if self.depth and self.depth_baseline:
            d, b = self.depth, self.depth_baseline
            rows.append(
                f"  depth (per-image scale+shift aligned): delta1 {d['delta1']:.1f} % (per-image mean depth "
                f"{b['delta1']:.1f} %), AbsRel {d['absrel']:.3f} ({b['absrel']:.3f})"
            )
        if self.semseg and self.semseg_baseline:
            s, b = self.semseg, self.semseg_baseline
            rows.append(f"  semseg: mIoU {s['miou']:.1f} % (majority class {b['miou']:.1f} %)")
        return "\n".join(rows + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------------ scoring


def align_scale_shift(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per image: a * pred + b with (a, b) the least-squares fit to `target` over `valid` pixels.

    pred, target (B, H, W); valid (B, H, W) bool. An image with fewer than 2 valid pixels, or a flat
    prediction, gets the mean of its valid target (b alone)."""
    w = valid.to(torch.float64).flatten(1)
    p, t = pred.to(torch.float64).flatten(1), target.to(torch.float64).flatten(1)
    n = w.sum(1).clamp_min(1)
    pm, tm = (w * p).sum(1) / n, (w * t).sum(1) / n
    cov = (w * (p - pm[:, None]) * (t - tm[:, None])).sum(1)
    var = (w * (p - pm[:, None]) ** 2).sum(1)
    a = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var))
    aligned = a[:, None] * (p - pm[:, None]) + tm[:, None]
    return aligned.reshape(pred.shape).to(torch.float32)


def mean_depth(target: Tensor, valid: Tensor) -> Tensor:
    """The per-image constant baseline: each image's mean valid depth everywhere (B, H, W)."""
    w = valid.to(torch.float64)
    mean = (w * target).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)
    return mean[:, None, None].expand_as(target).to(torch.float32)


def rgb_only_masks(model: MultiMAE, batch: int) -> dict[str, Tensor]:
    """(B, N) per input, 1 = masked: every rgb token visible, every other input's token masked."""
    m = model.cfg
    tokens = (m.image_size // m.patch_size) ** 2
    return {n: torch.full((batch, tokens), 0 if n == "rgb" else 1, dtype=torch.long) for n in m.inputs}


SPLIT_INPUTS = ("rgb", "depth", "semseg")  # what a labelled split gives the model to read (`split_inputs`)


def keep_masks(model: MultiMAE, batch: int, keep: dict[str, int], generator: torch.Generator) -> dict[str, Tensor]:
    """(B, N) per input, 1 = masked: `keep[name]` visible tokens (0 when not named) at positions drawn per sample."""
    m = model.cfg
    tokens = (m.image_size // m.patch_size) ** 2
    cpu = torch.device("cpu")
    return {n: random_mask(batch, tokens, torch.full((batch,), keep.get(n, 0)), cpu, generator) for n in m.inputs}


def check_keep(model: MultiMAE, keep: dict[str, int]) -> None:
    """What scoring with visible tokens can read from a labelled split (rgb, depth, semseg), within each input's
    token count, with at least one token visible: a ConfigError in one line otherwise."""
    m = model.cfg
    tokens = (m.image_size // m.patch_size) ** 2
    readable = [n for n in m.inputs if n in SPLIT_INPUTS]
    for name, k in keep.items():
        if name not in readable:
            raise ConfigError(f"--keep {name}: scoring reads the inputs among rgb, depth and semseg: {readable}")
        if not 0 <= k <= tokens:
            raise ConfigError(f"--keep {name}={k}: a {name} input has {tokens} tokens")
    if not any(keep.values()):
        raise ConfigError("--keep leaves no token visible")


def split_inputs(model: MultiMAE, rgb: Tensor, depth: Tensor, ids: Tensor, classes: bool) -> dict[str, Tensor]:
    """A split's rgb, metric depth (B, H, W) and class ids (B, H, W) at the image size as the model reads them:
    depth standardised per sample, classes resampled (nearest) to the semseg stride when they are the model's
    (`classes`); other inputs zeros."""
    out = blank_inputs(model, rgb)
    if "depth" in out:
        out["depth"] = standardize_depth_batch(depth.unsqueeze(1))
    if "semseg" in out and classes:
        size = model.cfg.image_size // MODALITIES["semseg"].stride
        small = F.interpolate(ids.unsqueeze(1).float(), size=(size, size), mode="nearest-exact")
        out["semseg"] = small.squeeze(1).long()
    return out


def blank_inputs(model: MultiMAE, rgb: Tensor) -> dict[str, Tensor]:
    """rgb, and zeros for every other input (its tokens are all masked: the values never reach the encoder)."""
    m, b = model.cfg, rgb.shape[0]
    out = {"rgb": rgb}
    for name in m.inputs:
        if name == "rgb":
            continue
        spec, size = MODALITIES[name], m.image_size // MODALITIES[name].stride
        out[name] = (
            torch.zeros((b, size, size), dtype=torch.long)
            if spec.channels is None
            else torch.zeros(b, spec.channels, size, size)
        )
    return out


def predict_from_rgb(
    model: MultiMAE, rgb: Tensor, inputs: dict[str, Tensor] | None = None, masks: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """rgb (B, 3, S, S) -> the decoders' predictions (fp32, cpu) with only the rgb tokens visible (or the given
    inputs under the given masks)."""
    device = model.global_tokens.device
    inputs = {n: x.to(device) for n, x in (inputs or blank_inputs(model, rgb)).items()}
    masks = {n: m.to(device) for n, m in (masks or rgb_only_masks(model, rgb.shape[0])).items()}
    with torch.no_grad():
        preds, _ = model(inputs, masks=masks)
    return {n: p.float().cpu() for n, p in preds.items()}


# ------------------------------------------------------------------------------------------------ the split


def _target_config(model_cfg: ModelConfig, task: str) -> FinetuneConfig:
    """The fine-tuning decoder of a split (centre square, targets at the image size), for `task`'s target."""
    model = dataclasses.replace(model_cfg, inputs=("rgb",), outputs=())
    return FinetuneConfig(model=model, task=TaskConfig(name=task))


def require_labels(info: DatasetInfo) -> None:
    """The split holds what scoring reads (rgb, depth and class maps): a DataError in one line before any compute."""
    manifest = info.manifest
    present = set(manifest.members) | {m.member for m in manifest.modalities.values()} if manifest else set()
    suffixes = {name: CODECS[MODALITIES[name].codec].suffix for name in ("rgb", "depth", "semseg")}
    missing = [name for name, suffix in suffixes.items() if suffix not in present]
    if missing:
        raise DataError(f"{info.root} has no {', '.join(missing)} labels to score against (members: {sorted(present)})")


def _batches(info: DatasetInfo, model_cfg: ModelConfig, batch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(rgb, metric depth, class ids) batches of the whole split, in order, centre-cropped; a sample that breaks
    the reader's rules is a DataError in one line."""
    depth_cfg, semseg_cfg = _target_config(model_cfg, "depth"), _target_config(model_cfg, "semseg")
    classes = num_classes_of(info, semseg_cfg)
    depth_batches = eval_batches(info, depth_cfg, 0, batch)
    try:
        for seg in eval_batches(info, semseg_cfg, classes, batch):
            dep = next(depth_batches)
            yield seg["rgb"], dep["depth"], seg["semseg"]
    except (KeyError, ValueError, StopIteration) as err:
        raise DataError(f"{info.root}: cannot read a sample to score: {err!r}") from None


def cross_modal_scores(
    checkpoint: Path,
    data: Location,
    *,
    batch: int = 32,
    device: str = "cpu",
    model: MultiMAE | None = None,
    keep: dict[str, int] | None = None,
    seed: int = 0,
) -> CrossModalScores:
    """Score `checkpoint`'s (or `model`'s) rgb-only depth and semseg predictions over the split `data`; with
    `keep`, its predictions of the masked patches with that many visible tokens per input."""
    from trainer.pretrain.reconstruct import load_model

    model = model if model is not None else load_model(checkpoint, device)
    model.eval()
    if keep is not None:
        check_keep(model, keep)
    generator = torch.Generator().manual_seed(seed)
    info = load_dataset(data)
    require_labels(info)
    classes = num_classes_of(info, _target_config(model.cfg, "semseg"))
    outputs = set(model.cfg.outputs)
    same_classes = model.cfg.num_classes == classes
    do_depth = "depth" in outputs
    do_semseg = "semseg" in outputs and same_classes
    notes = (
        []
        if do_semseg or "semseg" not in outputs
        else [f"semseg not scored: the model has {model.cfg.num_classes} classes, the split {classes}"]
    )
    if keep and keep.get("semseg", 0) and not same_classes:
        raise ConfigError(
            f"--keep semseg={keep['semseg']}: {info.root} has {classes} classes and the model {model.cfg.num_classes}; "
            "its class maps cannot be the model's input"
        )
    tokens = (model.cfg.image_size // model.cfg.patch_size) ** 2
    every = {n for n, k in (keep or {}).items() if k == tokens}  # inputs with nothing masked: nothing to score
    shown = [n for n in sorted(every) if n in outputs and n != "rgb"]  # decoders left nothing to predict
    notes += [f"{n} not scored: every {n} token is visible, none is predicted" for n in shown]
    do_depth, do_semseg = do_depth and "depth" not in every, do_semseg and "semseg" not in every
    depth, depth_base = DepthMetrics(), DepthMetrics()
    seg = SegmentationMetrics(classes, IGNORE_ID)
    counts, samples = torch.zeros(classes, dtype=torch.float64), 0
    for rgb, target, ids in _batches(info, model.cfg, batch):
        samples += rgb.shape[0]
        inputs = masks = None
        if keep is not None:
            inputs = split_inputs(model, rgb, target, ids, same_classes)
            masks = keep_masks(model, rgb.shape[0], keep, generator)
        preds = predict_from_rgb(model, rgb, inputs, masks) if do_depth or do_semseg else {}
        valid = target > 0
        if masks is not None and "depth" in masks:
            valid = valid & masked_pixels(masks["depth"], target.shape[-1])
        if masks is not None and "semseg" in masks:
            ids = ids.masked_fill(~masked_pixels(masks["semseg"], ids.shape[-1]), IGNORE_ID)
        if do_depth:
            depth.update(align_scale_shift(preds["depth"][:, 0], target, valid), target, valid)
            depth_base.update(mean_depth(target, valid), target, valid)
        labelled = ids[ids != IGNORE_ID]
        counts += torch.bincount(labelled.flatten(), minlength=classes)[:classes].double()
        if do_semseg:
            logits = F.interpolate(preds["semseg"], size=ids.shape[-2:], mode="bilinear", align_corners=False)
            seg.update(logits, ids)
    return CrossModalScores(
        samples=samples,
        depth=_depth_part(depth) if do_depth else None,
        depth_baseline=_depth_part(depth_base) if do_depth else None,
        semseg=_seg_part(seg) if do_semseg else None,
        semseg_baseline=majority_class_scores(counts) if do_semseg else None,
        notes=notes,
        visible=dict(keep) if keep is not None else None,
    )


def majority_class_scores(counts: Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy of predicting the most frequent class everywhere, from the split's labelled
    pixel counts per class: its IoU is its share of the pixels, every other present class scores 0."""
    total, present = float(counts.sum()), int((counts > 0).sum())
    share = float(counts.max()) / max(total, 1.0)
    return {"miou": 100.0 * share / max(present, 1), "pixel_acc": 100.0 * share}


def _depth_part(metric: DepthMetrics) -> dict[str, float]:
    r = metric.result()
    return {"delta1": r["delta1"], "absrel": r["absrel"]}


def _seg_part(metric: SegmentationMetrics) -> dict[str, float]:
    r = metric.result()
    return {"miou": r["miou"], "pixel_acc": r["pixel_acc"]}
