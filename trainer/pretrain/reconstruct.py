"""`mmforge reconstruct`: what a checkpoint predicts from a masked input, as one picture.

Rows per modality that is both an input and an output (rgb, depth, semseg, ...): the masked input, the
prediction, the prediction with the visible patches pasted back, and the target. Class maps are shown
through the dataset's palette (unlabelled pixels, the ignore id, black), value maps through a colour map
with one range per row (the target's).

Input: a sample of a dataset (`OUT:SHARD/KEY`) or an image, labelled on the fly with the labelers a
dataset's manifest names (`--labels-from OUT`; without it only rgb is known and the other inputs are fully
masked). The image is centre-cropped to a square and resized like the loader does. Masks: seeded Dirichlet
budgets (as in pretraining), per-modality token counts (`--keep rgb=98 --keep depth=0`; modalities not named
get none), or an `.npz` file with one 0/1 array per modality (1 = masked). Checkpoints: our pretraining ones
(`checkpoint-*.pt`, its config inside) or an official pretrained one (same state-dict layout; ViT-B assumed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from labelers.classes import full_palette
from labelers.spec import Labeler, LabelerSpec
from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
from pipeline.build.images import decode_image, read_source
from pipeline.format import fs
from pipeline.format.codecs import CODECS, decode_member
from pipeline.format.contract import Manifest, url_problem
from pipeline.format.locations import LocationError
from pipeline.format.outputs import check_output
from pipeline.format.samples import Sample, read_samples
from pipeline.format.schema import ConfigError
from pipeline.format.stores import location
from pipeline.pictures.figures import MASKED, Grid, fit_picture, picture, png_bytes
from pipeline.verify.docs import DatasetDocs, NotADatasetError, check_documents, checked_documents
from trainer.config import ModelConfig
from trainer.data.augment import augment, center_square
from trainer.engine.checkpoint import first_sentence, read_checkpoint
from trainer.engine.checkpoint_kind import RECONSTRUCTS
from trainer.engine.distributed import pick_device
from trainer.errors import CheckpointError, DataError
from trainer.model.masking import draw_masks, masked_pixels, random_mask
from trainer.model.modalities import MODALITIES, TASKS
from trainer.model.multimae import MultiMAE

COLUMNS = ("masked input", "prediction", "prediction + visible", "target")


@dataclass(frozen=True, kw_only=True)
class ReconstructConfig:
    checkpoint: Path
    out: Path
    image: Path | None = None
    sample: str | None = None  # "OUT:SHARD/KEY"
    labels_from: Path | None = None
    keep: dict[str, int] = field(default_factory=dict)
    mask: Path | None = None
    seed: int = 0
    device: str = "cpu"
    tile: int = 160


@dataclass(frozen=True, kw_only=True)
class Reconstruction:
    out: Path
    rows: tuple[str, ...]
    visible: dict[str, int]
    size: tuple[int, int]


# ------------------------------------------------------------------------------------------------ model


def load_model(path: Path, device: str = "cpu") -> MultiMAE:
    """Our pretraining checkpoint (its model config inside) or an official pretrained one (ViT-B), loaded strictly."""
    ckpt = read_checkpoint(path).require(*RECONSTRUCTS, use="reconstruct")
    cfg = ckpt.model_config
    model = MultiMAE(cfg)
    try:
        model.load_state_dict(ckpt.tensors, strict=True)
    except RuntimeError as err:
        why = first_sentence(str(err))
        raise CheckpointError(f"{path} does not fit MultiMAE {cfg.dim}x{cfg.depth}: {why}") from None
    return model.to(pick_device(str(device), 0)).eval()  # a bad or absent device: one line


# ------------------------------------------------------------------------------------------------ inputs


def _docs(folder: Path) -> DatasetDocs:
    try:
        docs = check_documents(folder)
    except NotADatasetError as err:
        raise ConfigError(str(err)) from None
    if docs.manifest is None or docs.index is None:
        raise ConfigError(f"{folder}: manifest.json and index.json are needed")
    return docs


def read_sample(spec: str) -> tuple[dict[str, np.ndarray], Manifest]:
    """`OUT:SHARD/KEY` -> decoded arrays of the sample's maps (rgb and the manifest's modalities)."""
    folder, sep, rest = spec.rpartition(":")
    shard, slash, key = rest.partition("/")
    if not sep or not slash or not key:
        raise ConfigError(
            f"--sample must look like OUT:SHARD/KEY (e.g. out/demo:train-000000/00000000000), got {spec!r}"
        )
    try:
        with checked_documents(location(folder)) as docs:
            if docs.manifest is None or docs.index is None:
                raise ConfigError(f"{folder}: manifest.json and index.json are needed")
            entry = {e.name: e for e in docs.index.shards}.get(shard)
            if entry is None or url_problem(docs.paths, entry.name, entry.url) or shard not in docs.present:
                raise ConfigError(f"{folder} has no readable shard {shard!r}")
            found = [members for _, members in read_samples(docs.shard_location(shard), keys=[key])]
            manifest = docs.manifest
    except (NotADatasetError, LocationError) as err:
        raise ConfigError(str(err)) from None
    if not found or not found[0]:
        raise ConfigError(f"shard {shard} of {folder} has no sample {key!r}")
    return _decoded(found[0], manifest), manifest


def _decoded(members: Sample, manifest: Manifest) -> dict[str, np.ndarray]:
    """rgb and the manifest's modalities of a raw sample, decoded by the codec table."""
    rgb = CODECS["rgb"].suffix
    arrays = {"rgb": decode_member(rgb, members[rgb])}
    for name, info in manifest.modalities.items():
        if info.member in members and name in MODALITIES:
            arrays[name] = decode_member(info.member, members[info.member])
    return arrays


def label_image(path: Path, labels_from: Path | None) -> tuple[dict[str, np.ndarray], Manifest | None]:
    """An image file -> rgb, plus the maps of the labelers `labels_from`'s manifest names."""
    try:
        data = read_source(Path(path), max_bytes=256 * 2**20, max_pixels=89_478_485)
        rgb = decode_image(data, max_pixels=89_478_485).rgb
    except Exception as err:  # a bad image is the user's input: say so in one line
        raise ConfigError(f"cannot read image {path}: {type(err).__name__}: {err}") from None
    arrays: dict[str, np.ndarray] = {"rgb": rgb}
    if labels_from is None:
        return arrays, None
    manifest = _docs(labels_from).manifest
    assert manifest is not None
    for raw in manifest.labelers:
        spec, labeler = _manifest_labeler(raw, labels_from)
        (label,) = labeler([rgb])
        arrays[spec.modality] = CODECS[spec.modality].store(label, spec.output)[0]
    return arrays, manifest


def _manifest_labeler(raw: Mapping[str, Any], dataset: Path) -> tuple[LabelerSpec, Labeler]:
    """The labeler an entry of a dataset's manifest names, loaded here; an unknown name, a setting of the wrong
    kind or weights that are missing or unreadable is a one-line ConfigError naming the labeler and dataset."""
    from labelers import build_labeler, check_labeler, resolve_spec
    from labelers.registry import UnknownLabelerError
    from labelers.weights import WeightsUnavailableError

    name = str(raw.get("name"))
    where = f"labeler {name!r} of {dataset}/manifest.json"
    overrides = {
        k: v for k, v in raw.items() if k in ("weights", "revision", "size", "geometry", "min_side", "max_side")
    }
    try:
        spec = resolve_spec(name, overrides)
        check_labeler(spec)
    except UnknownLabelerError as err:
        raise ConfigError(f"{where}: {err.args[0]}") from None
    except (WeightsUnavailableError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None
    try:
        return spec, build_labeler(spec)
    except Exception as err:  # the weights' own loader (transformers, torch, safetensors) raises many kinds
        raise ConfigError(
            f"{where}: weights {spec.weights!r} cannot be loaded ({type(err).__name__}: {first_sentence(str(err))})"
        ) from None


def prepare(arrays: Mapping[str, np.ndarray], cfg: ModelConfig) -> tuple[dict[str, Tensor], set[str]]:
    """Centre square crop, the loader's resize and finish; absent inputs are zeros (and fully masked)."""
    h, w = arrays["rgb"].shape[:2]
    known = {
        n: a
        for n, a in arrays.items()
        if n in MODALITIES and n in set(cfg.inputs) | {TASKS[t].source for t in cfg.outputs}
    }
    tensors = {n: t.unsqueeze(0) for n, t in augment(known, center_square(h, w), cfg.image_size).items()}
    missing = set(cfg.inputs) - set(tensors)
    for name in missing:
        size = cfg.image_size // MODALITIES[name].stride
        channels = MODALITIES[name].channels
        tensors[name] = (
            torch.zeros((1, size, size), dtype=torch.long) if channels is None else torch.zeros(1, channels, size, size)
        )
    return tensors, missing


def make_masks(model: MultiMAE, cfg: ReconstructConfig, missing: set[str]) -> dict[str, Tensor]:
    mc = model.cfg
    tokens = {n: (mc.image_size // mc.patch_size) ** 2 for n in mc.inputs}
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.mask is not None:
        return _mask_file(cfg.mask, tokens)
    keep = dict(cfg.keep) if cfg.keep else None
    if keep is None and missing:
        keep = _split_visible(mc, [n for n in mc.inputs if n not in missing])
    if keep is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return draw_masks(tokens, 1, mc.num_visible, mc.dirichlet_alpha, torch.device("cpu"))
    unknown = sorted(set(keep) - set(tokens))
    if unknown:
        raise ConfigError(f"--keep names {unknown}, not inputs of this model ({', '.join(tokens)})")
    masks = {}
    for name, n in tokens.items():
        k = 0 if name in missing else keep.get(name, 0)
        if not 0 <= k <= n:
            raise ConfigError(f"--keep {name}={k}: a {name} input has {n} tokens")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            masks[name] = random_mask(1, n, torch.tensor([k]), torch.device("cpu"))
    if not any(int((m == 0).sum()) for m in masks.values()):
        raise ConfigError("the masks leave no token visible")
    return masks


def _split_visible(mc: ModelConfig, known: list[str]) -> dict[str, int]:
    """The model's visible budget split evenly over the inputs that are known."""
    share = mc.num_visible // max(1, len(known))
    return {n: share for n in known}


def _mask_file(path: Path, tokens: dict[str, int]) -> dict[str, Tensor]:
    try:
        with np.load(path) as data:
            masks = {n: torch.as_tensor(np.asarray(data[n]).reshape(1, -1), dtype=torch.long) for n in tokens}
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"--mask {path}: needs one 0/1 array per input {list(tokens)} in an .npz ({err})") from None
    for name, m in masks.items():
        if m.shape[1] != tokens[name] or not bool(((m == 0) | (m == 1)).all()):
            raise ConfigError(f"--mask {path}: {name} must hold {tokens[name]} values of 0 or 1")
    return masks


# ------------------------------------------------------------------------------------------------ figure


def _arrays(kind: str, pred: Tensor, target: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The model's prediction and target as arrays `picture` draws by their codec kind: class ids (h, w),
    vectors in [-1, 1] and rgb in [0, 1] (h, w, 3), values (h, w)."""
    if kind == "class_map":  # logits (C, h, w) and ids (h, w)
        return pred.argmax(0).numpy().astype(np.uint8), target.numpy().astype(np.uint8)
    if kind == "vector_map":  # unit vectors (3, h, w)
        return pred.permute(1, 2, 0).numpy(), target.permute(1, 2, 0).numpy()
    if kind == "image":  # normalised rgb (3, h, w)
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (pred * std + mean).permute(1, 2, 0).numpy(), (target * std + mean).permute(1, 2, 0).numpy()
    return pred[0].numpy(), target[0].numpy()


def _pictures(name: str, pred: Tensor, target: Tensor, masked: np.ndarray, palette: list[int]) -> list[np.ndarray]:
    """(masked input, prediction, prediction + visible, target) as uint8 RGB pictures."""
    kind = CODECS[MODALITIES[name].codec].kind
    p, t = _arrays(kind, pred, target)
    pasted = np.where(masked if p.ndim == 2 else masked[..., None], p, t)
    shown = [t, p, pasted, t]
    if kind == "value_map":  # clipped to the target's 2-98 % range
        lo, hi = np.percentile(t, (2, 98))
        shown = [np.clip(x, lo, hi) if hi > lo else x for x in shown]
    pics = [picture(x, kind, palette) for x in shown]
    pics[0] = pics[0].copy()
    pics[0][masked] = MASKED
    return pics


def drawn_outputs(cfg: ModelConfig) -> list[str]:
    """The outputs a figure draws: those that predict a modality as it is stored (norm_rgb, a per-patch
    normalised target, has no picture of its own)."""
    return [t for t in cfg.outputs if TASKS[t].source == t]


def render(
    model: MultiMAE,
    inputs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    preds: Mapping[str, Tensor],
    palette: list[int],
    tile: int = 160,
    missing: set[str] | None = None,
) -> Grid:
    mc, grid = model.cfg, model.cfg.image_size // model.cfg.patch_size
    rows = [t for t in drawn_outputs(mc) if t in inputs]
    tiles, labels = [], []
    for name in rows:
        target, pred = inputs[name][0].float(), preds[name][0].float().cpu()
        if target.ndim == 2:  # class ids (h, w)
            target = inputs[name][0]
        mask = masks[name] if name in masks else torch.ones(1, grid * grid, dtype=torch.long)  # a target only
        masked = masked_pixels(mask.cpu(), target.shape[-1])[0].numpy()
        pics = _pictures(name, pred, target.cpu(), masked, palette)
        visible = int((mask == 0).sum())
        kind = CODECS[MODALITIES[name].codec].kind
        if missing and name in missing:
            pics[3] = np.full_like(pics[3], 230)
        tiles.append([fit_picture(p, kind, tile - 2) for p in pics])
        labels.append(
            f"{name}: {visible} of {mask.shape[1]} tokens visible"
            + (" (no target)" if missing and name in missing else "")
        )
    return Grid(titles=list(COLUMNS), labels=labels, tiles=tiles, tile=tile)


def predict(model: MultiMAE, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    device = model.global_tokens.device
    with torch.no_grad():
        preds, _ = model(
            {n: inputs[n].to(device) for n in model.cfg.inputs}, masks={n: m.to(device) for n, m in masks.items()}
        )
    return {n: p.float().cpu() for n, p in preds.items()}


def _palette_of(manifest: Manifest | None) -> list[int]:
    info = next((m for m in manifest.modalities.values() if m.palette), None) if manifest else None
    return full_palette(info.palette if info else None)


def reconstruct(cfg: ReconstructConfig) -> Reconstruction:
    """Write the reconstruction figure of `cfg.checkpoint` on one input to `cfg.out`."""
    if (cfg.image is None) == (cfg.sample is None):
        raise ConfigError("give exactly one of --image FILE and --sample OUT:SHARD/KEY")
    problem = fs.output_file_problem(Path(cfg.out))
    if problem:
        raise ConfigError(f"--out {cfg.out}{problem}")
    check_output(cfg.out, "--out", (cfg.checkpoint, cfg.image, cfg.mask, cfg.labels_from))
    model = load_model(cfg.checkpoint, cfg.device)
    if not drawn_outputs(model.cfg):
        raise ConfigError(
            f"{cfg.checkpoint} predicts {', '.join(model.cfg.outputs) or 'nothing'} only: no modality to draw "
            "(norm_rgb is normalised per patch; a figure needs an rgb, depth, semseg or other modality output)"
        )
    arrays, manifest = read_sample(cfg.sample) if cfg.sample else label_image(cfg.image, cfg.labels_from)  # type: ignore[arg-type]
    try:
        inputs, missing = prepare(arrays, model.cfg)
    except (ValueError, RuntimeError) as err:
        raise DataError(f"the input does not fit the model: {err}") from None
    masks = make_masks(model, cfg, missing)
    preds = predict(model, inputs, masks)
    grid = render(model, inputs, masks, preds, _palette_of(manifest), cfg.tile, missing)
    image = grid.render()
    fs.write_bytes_atomic(Path(cfg.out), png_bytes(image))
    visible = {n: int((m == 0).sum()) for n, m in masks.items()}
    return Reconstruction(out=Path(cfg.out), rows=tuple(grid.labels), visible=visible, size=image.size)


def figure_png(model: MultiMAE, inputs: Mapping[str, Tensor], seed: int, palette: list[int] | None = None) -> bytes:
    """The reconstruction figure of one prepared sample with seeded Dirichlet masks (pretraining figures);
    leaves the global random state and the model's mode as they were."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mc = model.cfg
            tokens = {n: (mc.image_size // mc.patch_size) ** 2 for n in mc.inputs}
            masks = draw_masks(tokens, 1, mc.num_visible, mc.dirichlet_alpha, torch.device("cpu"))
        preds = predict(model, inputs, masks)
        return png_bytes(render(model, inputs, masks, preds, palette or full_palette(None)).render())
    finally:
        model.train(was_training)


def first_sample(info: Any, cfg: ModelConfig) -> tuple[dict[str, Tensor], list[int]]:
    """The first sample of a run's dataset, prepared for the model (the pretraining figures show it)."""
    if info.manifest is None or not info.shards:
        raise DataError(f"dataset {info.root} has no manifest or no shards to take a figure sample from")
    first = next(read_samples(info.shards[0].path, ordinals=[0]), None)
    inputs, _ = prepare(_decoded(first[1] if first else {}, info.manifest), cfg)
    return inputs, _palette_of(info.manifest)


def as_image(data: bytes) -> Any:
    """PNG bytes -> HWC uint8 array (for TensorBoard and wandb)."""
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
