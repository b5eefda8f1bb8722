"""Loader over the shard contract: decoding, shared crop/flip, epoch quotas, cursors, bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.format.codecs import IGNORE_ID, encode_semseg
from pipeline.format.contract import sample_key
from pipeline.synth.rectangles import write_dataset
from pipeline.verify.sample import MapSpec, check_sample
from trainer.config import DataConfig, smoke_config
from trainer.data import batch_resize
from trainer.data.augment import Crop, augment, sample_crop
from trainer.data.dataset import load_dataset
from trainer.data.loader import Cursor, EpochPlan, ShardStream, check_arrays, make_loader
from trainer.errors import DataError
from trainer.model.modalities import IMAGENET_MEAN, IMAGENET_STD

MODEL = smoke_config().model
DATA = DataConfig(batch_size=3, workers=0, shuffle_buffer=8)


def stream(
    root: Path,
    *,
    micro: int,
    rank: int = 0,
    world: int = 1,
    workers: int = 1,
    cursors: list[Cursor] | None = None,
    rotation: int = 0,
    data: DataConfig = DATA,
    allow_defects: bool = False,
    on_device: bool = False,
) -> ShardStream:
    plan = EpochPlan(seed=0, epoch=0, rank=rank, world=world, workers=workers, micro_batches=micro)
    cursors = cursors or [Cursor() for _ in range(workers)]
    info = load_dataset(root, allow_defects=allow_defects)
    return ShardStream(
        info=info, data=data, model=MODEL, plan=plan, cursors=cursors, rotation=rotation, on_device=on_device
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), [7, 5, 9, 4])


def test_batches_have_model_shapes(dataset: Path) -> None:
    batches = list(stream(dataset, micro=3).batches(0))
    assert len(batches) == 3
    b = batches[0]
    assert b["rgb"].shape == (3, 3, 64, 64) and b["rgb"].dtype == torch.float32
    assert b["depth"].shape == (3, 1, 64, 64)
    assert b["semseg"].shape == (3, 16, 16) and b["semseg"].dtype == torch.long
    assert int(b["semseg"].max()) < 133
    depth = b["depth"][0].flatten().sort().values[6 * 64 * 64 // 10 : 7 * 64 * 64 // 10]
    assert depth.abs().max() < 5  # standardised on the trimmed range
    assert b["__cursor__"] == {"worker": 0, "raw": 3, "batches": 1, "corrupt": 0}


def test_uneven_shards_give_every_rank_the_same_number_of_batches(dataset: Path) -> None:
    counts = [
        len(list(stream(dataset, micro=5, rank=r, world=2, workers=2).batches(w))) for r in (0, 1) for w in (0, 1)
    ]
    assert counts == [3, 2, 3, 2]  # 5 micro-batches per rank, though ranks hold 16 and 9 samples


def test_too_few_shards_for_ranks_times_workers(dataset: Path) -> None:
    with pytest.raises(DataError, match="4 shards cannot feed 2 ranks x 3 loader workers"):
        list(stream(dataset, micro=2, world=2, workers=3).batches(0))


def test_resumed_stream_repeats_the_uninterrupted_one(dataset: Path) -> None:
    """Worker rotation + cursors: after k micro-batches a new loader yields exactly batches k, k+1, ..."""
    full = list(make_loader(stream(dataset, micro=7, workers=2), workers=2, pin_memory=False))
    assert [b["__cursor__"]["worker"] for b in full] == [0, 1, 0, 1, 0, 1, 0]
    k = 3
    cursors = [Cursor(), Cursor()]
    for b in full[:k]:
        c = b["__cursor__"]
        cursors[c["worker"]] = Cursor(raw=c["raw"], batches=c["batches"], corrupt=c["corrupt"])
    rest = list(make_loader(stream(dataset, micro=7, workers=2, cursors=cursors, rotation=k % 2), 2, False))
    assert len(rest) == len(full) - k
    for a, b in zip(full[k:], rest, strict=True):
        assert all(torch.equal(a[m], b[m]) for m in ("rgb", "depth", "semseg"))


def synthetic_pair(flip_source: bool = False) -> dict[str, np.ndarray]:
    h, w = 90, 120
    ids = np.full((h, w), 2, np.uint8)
    ids[:, :35] = 1  # class 1 on the left, an asymmetric layout
    ids[:20, 35:] = 3
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[ids == 1] = 255
    rgb[ids == 3] = 128
    depth = (ids.astype(np.uint16) * 20000).astype(np.uint16)
    return {"rgb": rgb, "depth": depth, "semseg": ids}


@pytest.mark.parametrize("seed", range(12))
def test_flipped_rgb_semseg_pair_stays_aligned(seed: int) -> None:
    arrays = synthetic_pair()
    rng = np.random.default_rng(seed)
    crop = sample_crop(90, 120, rng, (0.2, 1.0), (0.75, 4 / 3), 0.5)
    out = augment(arrays, crop, 224)
    rgb = out["rgb"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    rgb_small = rgb[0, 2::4, 2::4]  # pixel centres of the 56 x 56 grid
    expected = torch.where(rgb_small > 0.75, 1, torch.where(rgb_small > 0.25, 3, 2))
    agree = float((expected == out["semseg"]).double().mean())
    assert agree > 0.95, (crop, agree)
    depth = out["depth"][0, 2::4, 2::4]  # depth 20000 x class id, standardised: classes by nearest mean
    present = [c for c in (1, 2, 3) if (out["semseg"] == c).sum() > 0]
    means = torch.stack([depth[out["semseg"] == c].mean() for c in present])
    assert torch.equal(means.argsort(), torch.arange(len(present)))
    nearest = torch.tensor(present)[(depth.unsqueeze(-1) - means).abs().argmin(-1)]
    assert float((nearest == out["semseg"]).double().mean()) > 0.95


def test_flip_mirrors_every_modality_together() -> None:
    arrays = synthetic_pair()
    box = {"top": 5, "left": 10, "height": 80, "width": 100}
    plain, flipped = augment(arrays, Crop(**box, flip=False), 64), augment(arrays, Crop(**box, flip=True), 64)
    for name in ("rgb", "depth", "semseg"):
        assert torch.equal(flipped[name], plain[name].flip(-1)), name
    assert float((flipped["semseg"][:, -4:] == 1).double().mean()) == 1.0  # class 1 moved to the right


def test_missing_folder_and_mismatched_index(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset(tmp_path / "nope")
    root = write_dataset(tmp_path / "d", [3, 3])
    index = json.loads((root / "index.json").read_text())
    index["shards"][1]["bytes"] += 1
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"fails its checks.*bytes_mismatch"):
        load_dataset(root)
    with pytest.raises(DataError, match="index does not match shards"):  # never read, even when told to go on
        load_dataset(root, allow_defects=True)
    (root / "shards" / "train-000001.tar").unlink()
    with pytest.raises(DataError, match="missing_shard"):
        load_dataset(root)
    with pytest.raises(DataError, match="no file"):
        load_dataset(root, allow_defects=True)


def test_corrupt_samples_are_counted_and_skipped(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", [6])
    shard = root / "shards" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    one, three = sample_key(0, 1), sample_key(0, 3)
    members = [(n, b"not a jpeg" if n == f"{one}.rgb.jpg" else d) for n, d in members]
    members = [(n, d) for n, d in members if n != f"{three}.depth.png"]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = json.loads((root / "index.json").read_text())
    index["shards"][0]["bytes"] = shard.stat().st_size
    (root / "index.json").write_text(json.dumps(index))
    data = DataConfig(batch_size=4, workers=0, shuffle_buffer=1)
    with pytest.raises(DataError, match="fails its checks"):  # the stats marker says other bytes
        stream(root, micro=2, data=data)
    batches = list(stream(root, micro=2, data=data, allow_defects=True).batches(0))
    assert len(batches) == 2 and batches[-1]["__cursor__"]["corrupt"] >= 2
    strict = DataConfig(batch_size=4, workers=0, shuffle_buffer=1, max_corrupt=1)
    with pytest.raises(DataError, match="more than 1 corrupt samples"):
        list(stream(root, micro=2, data=strict, allow_defects=True).batches(0))


def test_class_ids_beyond_the_model_are_rejected_but_the_ignore_id_is_read() -> None:
    arrays = synthetic_pair()
    arrays["semseg"][0, :3] = IGNORE_ID
    assert check_arrays(arrays, MODEL) == (90, 120)
    arrays["semseg"][1, :2] = 200
    with pytest.raises(ValueError, match=r"class ids \[200\] >= num_classes 133 \(and not 255\) in 2 px"):
        check_arrays(arrays, MODEL)


@pytest.mark.parametrize(
    "ids",
    [(0, 132), (255,), (0, 132, 255), (133,), (0, 200), (254, 255), (132, 133, 255)],
)
def test_verify_and_the_loader_accept_the_same_class_maps(ids: tuple[int, ...]) -> None:
    """One rule (`codecs.class_ids_problem`): ids < num_classes and 255 pass both; 133..254 fail both."""
    arrays = synthetic_pair()
    arrays["semseg"][: len(ids), :4] = np.asarray(ids, np.uint8)[:, None]
    spec = MapSpec(modality="semseg", member="semseg.png", num_classes=MODEL.num_classes)
    members = {"semseg.png": encode_semseg(arrays["semseg"])}
    verified = not check_sample("00000000000", members, "train-000000", (spec,), None)
    try:
        check_arrays(arrays, MODEL)
        loaded = True
    except ValueError:
        loaded = False
    assert verified == loaded == all(i < 133 or i == IGNORE_ID for i in ids)


def test_ignored_pixels_are_read_not_skipped_in_both_loader_modes(tmp_path: Path) -> None:
    """A dataset with unlabelled (255) borders streams without a corrupt sample; the targets keep 255."""
    root = write_dataset(tmp_path / "d", [5, 4], ignore_border=24)
    data = DataConfig(batch_size=3, workers=0, shuffle_buffer=4, max_corrupt=0)
    worker = list(stream(root, micro=3, data=data).batches(0))
    assert worker[-1]["__cursor__"]["corrupt"] == 0
    ids = torch.cat([b["semseg"] for b in worker])
    assert (ids == IGNORE_ID).any() and int(ids[ids != IGNORE_ID].max()) < 133
    packed = stream(root, micro=3, data=data, on_device=True).batches(0)
    device = [batch_resize.to_device(b, torch.device("cpu"), MODEL.image_size) for b in packed]
    assert all(torch.equal(a["semseg"], b["semseg"]) for a, b in zip(worker, device, strict=True))


def test_ignored_pixels_survive_the_crop_and_the_stride_exactly() -> None:
    """Nearest-exact resampling keeps 255 a pixel value like any id (224 -> 56: the pixel at each cell centre)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 133, (56, 56)).astype(np.uint8).repeat(4, 0).repeat(4, 1)  # 224 x 224, 4 x 4 cells
    ids[rng.random((224, 224)) < 0.3] = IGNORE_ID  # single ignored pixels too, not only whole cells
    out = augment({"semseg": ids}, Crop(top=0, left=0, height=224, width=224, flip=False), 224)["semseg"]
    assert torch.equal(out, torch.from_numpy(ids[2::4, 2::4]).long())
    flipped = augment({"semseg": ids}, Crop(top=0, left=0, height=224, width=224, flip=True), 224)["semseg"]
    assert torch.equal(flipped, torch.from_numpy(ids[2::4, ::-1][:, 2::4].copy()).long())  # flipped at 224


def test_manifest_must_provide_the_model_modalities(tmp_path: Path) -> None:
    from trainer.data.dataset import check_manifest

    root = write_dataset(tmp_path / "d", [2])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["semseg"]["num_classes"] = 150
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"150 classes, model\.num_classes is 133"):
        check_manifest(load_dataset(root), MODEL)
    del manifest["modalities"]["depth"]
    manifest["members"].remove("depth.png")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="no 'depth' member"):
        check_manifest(load_dataset(root), MODEL)


def test_manifest_with_another_ignore_id_is_refused(tmp_path: Path) -> None:
    """verify would accept that id's pixels; the loader and losses know 255 only: refused before training."""
    from trainer.data.dataset import check_manifest

    root = write_dataset(tmp_path / "d", [2])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["modalities"]["semseg"]["ignore_id"] == IGNORE_ID
    check_manifest(load_dataset(root), MODEL)
    manifest["modalities"]["semseg"]["ignore_id"] = 0
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DataError, match="marks unlabelled pixels with 0; the trainer reads the contract's ignore id 255"
    ):
        check_manifest(load_dataset(root), MODEL)


def test_interleave_mixes_open_shards_round_robin() -> None:
    from trainer.data.loader import interleave

    streams = iter([iter("abc"), iter("de"), iter(""), iter("fghi"), iter("j")])
    assert "".join(interleave(streams, 2)) == "adbecfjghi"
    assert "".join(interleave(iter([iter("ab")]), 4)) == "ab"


def test_depth_standardisation_uses_the_trimmed_middle() -> None:
    from trainer.model.modalities import standardize_depth

    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(1, 37, 41, generator=g) * 20).round() + 1) / 20  # many ties, all valid (> 0)
    values = x.flatten().sort().values.double()
    kept = values[int(0.1 * values.numel()) : int(0.9 * values.numel())]
    expected = (x.double() - kept.mean()) / torch.sqrt(kept.var() + 1e-6)
    assert torch.allclose(standardize_depth(x).double(), expected, atol=1e-5)


def test_class_maps_are_sampled_at_cell_centres() -> None:
    """224 -> 56 keeps the label nearest each 4 x 4 cell's centre (4i + 1.5), not its corner (4i): with plain
    "nearest" every label would sit 1.5 px up-left of the rgb/depth patch it belongs to."""
    rows = np.repeat(np.arange(224, dtype=np.uint8)[:, None], 224, axis=1)  # id = row index (< 256)
    crop = Crop(top=0, left=0, height=224, width=224, flip=False)
    ids = augment({"semseg": rows}, crop, 224)["semseg"]
    centres = 4 * np.arange(56) + 1.5
    assert ids.shape == (56, 56)
    assert np.abs(ids[:, 0].numpy() - centres).max() <= 0.5


def test_depth_standardisation_leaves_invalid_pixels_out() -> None:
    """Depth 0 is invalid (the sky of a rendered scene): the trimmed statistics come from the valid pixels
    only, invalid pixels are 0 afterwards, and the batch path (on the device) gives the per-sample numbers."""
    from trainer.model.modalities import standardize_depth, standardize_depth_batch

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 24, 20, generator=g) * 5 + 0.5
    x[0, :, :9] = 0.0  # a sky over the top rows
    x[1] = 0.0  # nothing hit at all
    x[2, :, 3, 4] = 0.0  # one hole
    for sample, out in zip(x, standardize_depth_batch(x), strict=True):
        values = sample[sample > 0].sort().values.double()
        if values.numel():
            kept = values[int(0.1 * values.numel()) : int(0.9 * values.numel())]
            expected = ((sample.double() - kept.mean()) / torch.sqrt(kept.var() + 1e-6)).masked_fill(sample <= 0, 0)
        else:
            expected = torch.zeros_like(sample, dtype=torch.float64)
        assert torch.allclose(standardize_depth(sample).double(), expected, atol=1e-5)
        assert torch.allclose(out.double(), expected, atol=1e-5)
    assert (standardize_depth_batch(x)[0, :, :9] == 0).all()
    full = torch.rand(2, 1, 16, 16, generator=g) + 0.1  # no invalid pixel: the official formula, both paths
    assert torch.allclose(standardize_depth_batch(full)[1], standardize_depth(full[1]), atol=1e-5)
