"""The shards load, with exact uint16 depth and class ids, in the tools users already have: WebDataset,
wids, Hugging Face datasets and Ray Data. Ground truth is `read_samples` (tarfile + the codec table)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.format.codecs import decode_member
from pipeline.format.wds import decode_sample, mmforge_decoder
from tests.test_build import read_samples
from tests.test_verify import good_dataset  # noqa: F401  (the session's one good dataset)

pytestmark = pytest.mark.slow  # one session build of 6 photos with the smoke labelers (~10 s)
MAPS = ("depth.png", "semseg.png")


@pytest.fixture(scope="module")
def truth(good_dataset):  # noqa: F811
    return read_samples(good_dataset)


@pytest.fixture(scope="module")
def urls(good_dataset):  # noqa: F811
    return [str(p) for p in sorted((good_dataset / "shards").glob("*.tar"))]


def assert_exact(samples: dict, truth: dict) -> None:
    """Every sample present, maps with the right dtype and exactly the right values."""
    assert sorted(samples) == sorted(truth)
    for key, sample in samples.items():
        assert sample["depth.png"].dtype == np.uint16 and sample["semseg.png"].dtype == np.uint8
        for name in (*MAPS, "rgb.jpg"):
            np.testing.assert_array_equal(sample[name], truth[key][name])
        assert sample["json"] == truth[key]["json"]
    assert max(int(s["depth.png"].max()) for s in samples.values()) > 255  # really 16-bit content


def test_webdataset_with_the_project_decoder(urls, truth):
    wds = pytest.importorskip("webdataset")
    handler = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode(mmforge_decoder)}
    assert_exact(handler, truth)
    mapped = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).map(decode_sample)}
    assert_exact(mapped, truth)


def test_webdataset_stock_pil_decoder_destroys_depth_and_ids(urls, truth):
    wds = pytest.importorskip("webdataset")
    sample = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pil")))
    depth, semseg = np.asarray(sample["depth.png"]), np.asarray(sample["semseg.png"])
    assert depth.dtype == np.uint8 and depth.shape[-1] == 3  # 16-bit depth clipped into 8-bit RGB
    assert semseg.ndim == 3  # palette ids turned into colours
    assert not np.array_equal(depth[..., 0], truth[sample["__key__"]]["depth.png"])


def test_unknown_members_are_refused():
    with pytest.raises(ValueError, match="unknown member type"):
        mmforge_decoder(".pth", b"\x80\x04")
    with pytest.raises(ValueError, match="not in the codec table"):
        decode_sample({"__key__": "k", "x.pkl": b""})


def test_wids_shard_index(good_dataset, truth, tmp_path):  # noqa: F811
    wids = pytest.importorskip("wids")
    ds = wids.ShardListDataset(
        str(good_dataset / "wids-index.json"), cache_dir=str(tmp_path / "wids-cache"), transformations=[decode_sample]
    )
    assert len(ds) == len(truth)
    assert_exact({ds[i]["__key__"]: ds[i] for i in range(len(ds))}, truth)


def test_hugging_face_datasets(urls, truth, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train", cache_dir=str(tmp_path))
    assert isinstance(ds.features["depth.png"], datasets.Image)  # png members become PIL images
    as_pil = {  # decode=True: PIL images; np.asarray keeps I;16 depth and palette (P) ids exact
        r["__key__"]: {"rgb.jpg": np.asarray(r["rgb.jpg"]), **{m: np.asarray(r[m]) for m in MAPS}, "json": r["json"]}
        for r in ds
    }
    assert ds[0]["depth.png"].mode == "I;16" and ds[0]["semseg.png"].mode == "P"
    assert_exact(as_pil, truth)
    raw = ds.cast_column("depth.png", datasets.Image(decode=False))
    raw = raw.cast_column("semseg.png", datasets.Image(decode=False))
    as_bytes = {  # the robust way: no PIL conversion can happen, the project's codecs on the stored bytes
        r["__key__"]: {
            "rgb.jpg": np.asarray(r["rgb.jpg"]),
            **{m: decode_member(m, r[m]["bytes"]) for m in MAPS},
            "json": r["json"],
        }
        for r in raw
    }
    assert_exact(as_bytes, truth)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_data_read_webdataset(ray_session, urls, truth):
    rows = ray_session.data.read_webdataset(urls, decoder=decode_sample).take_all()
    assert_exact({r["__key__"]: r for r in rows}, truth)


def test_wids_serves_a_stale_cached_shard_after_a_rebuild_unless_read_in_place(tmp_path):
    """What README "Reading the shards" warns of: wids copies each shard into its cache once and keeps using
    the copy; `localname=lambda url: url` reads the shards where they are."""
    wids = pytest.importorskip("wids")
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from tests.conftest import DEMO_RECIPE, EXAMPLES

    out, index = tmp_path / "ds", str(tmp_path / "ds" / "wids-index.json")

    def build(png_level: int) -> str:
        recipe = tmp_path / f"level{png_level}.toml"
        recipe.write_text(DEMO_RECIPE.read_text().replace("png_level = 1", f"png_level = {png_level}"))
        args = ["build-dataset", str(EXAMPLES), str(out), "--recipe", str(recipe), "--executor", "local"]
        assert CliRunner().invoke(app, [*args, "--overwrite", "--quiet"]).exit_code == 0
        return __import__("json").loads((out / "manifest.json").read_text())["plan_id"]

    def first_sample_dataset(**where) -> str:
        return wids.ShardListDataset(index, transformations=[decode_sample], **where)[0]["json"]["dataset"]

    cache = {"cache_dir": str(tmp_path / "wids-cache")}
    old = build(1)
    assert first_sample_dataset(**cache) == old
    new = build(9)  # same shard names, other bytes (and another dataset id in every sample)
    assert new != old
    assert first_sample_dataset(**cache) == old  # stale: the cached copy of the old build
    assert first_sample_dataset(localname=lambda url: url) == new  # in place: this build
