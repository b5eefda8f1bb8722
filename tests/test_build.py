"""End to end on the CPU: the bundled photos plus bad files -> shards with the smoke labelers."""

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.build.builder import build_dataset
from pipeline.build.recipe import BuildConfig, ConfigError, load_recipe, with_overrides
from pipeline.build.shard import CPU_STAGES, PROCESS_CPU, STAGES, ShardContext, _label_map
from pipeline.format.codecs import decode_member, dequantize_depth, split_member
from tests.conftest import DEMO_RECIPE, EXAMPLES, bad_image_bytes, odd_image_bytes

pytestmark = pytest.mark.slow


def build(src: Path, out: Path, executor: str = "local", **kw):
    recipe = with_overrides(load_recipe(DEMO_RECIPE), shard_size=kw.pop("shard_size", 5))
    return build_dataset(BuildConfig(src=src, out=out, recipe=recipe, executor=executor, quiet=True, **kw))


def read_samples(out: Path) -> dict[str, dict[str, object]]:
    """Every sample of every shard, read with nothing but tarfile and the project's codecs."""
    samples: dict[str, dict[str, object]] = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, suffix = split_member(member.name)
                data = tar.extractfile(member).read()
                samples.setdefault(key, {})[suffix] = decode_member(suffix, data)
    return samples


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_end_to_end_counts_geometry_ids_and_determinism(source_with_bad_files, tmp_path):
    out = tmp_path / "out"
    result = build(source_with_bad_files, out)
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = len(list(source_with_bad_files.iterdir())) - 0
    totals = result.manifest.totals
    assert totals.inputs == inputs == totals.written + totals.failed
    assert totals.failed == len(bad_image_bytes()) and not result.ok
    assert {f["path"] for f in manifest["failures"]} == set(bad_image_bytes())
    assert all(f["error"] and f["message"] for f in manifest["failures"])
    kinds = totals.source_kinds
    assert sum(kinds.values()) == totals.written
    assert kinds["JPEG/CMYK"] == 1 and kinds["PNG/RGB"] == 1 and kinds["PNG/I;16"] == 1

    samples = read_samples(out)
    assert len(samples) == totals.written
    written_sources = {s["json"]["source"] for s in samples.values()}
    assert set(odd_image_bytes()) <= written_sources
    for s in samples.values():
        h, w = s["rgb.jpg"].shape[:2]
        assert s["depth.png"].shape == (h, w) and s["depth.png"].dtype == np.uint16
        assert s["semseg.png"].shape == (h, w) and int(s["semseg.png"].max()) < 133
        assert s["json"]["size"] == {"width": w, "height": h}
        assert np.isfinite(dequantize_depth(s["depth.png"], s["json"]["depth"])).all()

    index = json.loads((out / "index.json").read_text())
    assert sum(sh["samples"] for sh in index["shards"]) == totals.written
    for stats in (json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")):
        timings = stats["timings"]  # wall and CPU seconds per stage; one thread's CPU time cannot exceed wall
        assert set(timings) == set(STAGES) | set(CPU_STAGES) | {PROCESS_CPU}
        assert timings[PROCESS_CPU] >= sum(timings[c] for c in CPU_STAGES) - 0.01  # every thread >= one
        assert all(0 <= timings[f"{s}_cpu"] <= timings[s] + 0.01 for s in STAGES), timings
        assert timings["read_cpu"] > 0 and timings["encode_cpu"] > 0

    again = tmp_path / "again"
    build(source_with_bad_files, again)
    assert shard_bytes(again) == shard_bytes(out)


def test_resume_skips_done_shards_and_refuses_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(Path(DEMO_RECIPE).parents[1].joinpath("examples/images").glob("*.jpg"))[:6]:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    first = build(src, out, shard_size=2)
    assert first.ok and first.images_this_run == 6
    (out / "shards" / "train-000001.stats.json").unlink()  # as if killed before the marker
    second = build(src, out, shard_size=2)
    assert second.ok and second.images_this_run == 2
    with pytest.raises(ConfigError, match="another recipe"):
        build(src, out, shard_size=3)
    (src / "extra.jpg").write_bytes((src / sorted(p.name for p in src.iterdir())[0]).read_bytes())
    with pytest.raises(ConfigError, match="changed"):
        build(src, out, shard_size=2)
    redo = build(src, out, shard_size=2, overwrite=True)
    assert redo.ok and redo.manifest.totals.written == 7


def test_class_folders_give_cls_members(tmp_path):
    src = tmp_path / "src"
    photos = sorted(Path(DEMO_RECIPE).parents[1].joinpath("examples/images").glob("*.jpg"))[:4]
    for i, p in enumerate(photos):
        (src / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"class_{i % 2}" / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    build(src, out)
    samples = read_samples(out)
    assert sorted(s["cls"] for s in samples.values()) == [0, 0, 1, 1]
    assert {s["json"]["class"] for s in samples.values()} == {"class_0", "class_1"}
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["class_0", "class_1"]


class _FailsOnNarrowImages:
    """A labeler that raises for images narrower than 40 px, to exercise labelling failures."""

    def __init__(self, spec):
        self.spec = spec
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        if any(im.shape[1] < 40 for im in images):
            raise ValueError("cannot label an image this narrow")
        return [np.zeros(im.shape[:2], np.float32) + i for i, im in enumerate(images)]


def test_labelling_failure_is_isolated_on_the_last_attempt_and_retried_on_rerun(tmp_path, monkeypatch):
    from labelers import LabelerSpec, registry

    spec = LabelerSpec(
        name="narrow-fails",
        modality="depth",
        model_class="none",
        weights="",
        license="CC0",
        size=32,
        output="depth",
        meaningless=True,
    )
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_labeler(spec)(lambda spec, **kw: _FailsOnNarrowImages(spec))
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    from PIL import Image

    Image.new("RGB", (30, 50), "red").save(src / "narrow.jpg")
    recipe = with_overrides(load_recipe(DEMO_RECIPE), shard_size=4)
    import dataclasses

    recipe = dataclasses.replace(recipe, labelers=(spec, recipe.labelers[1]))
    cfg = BuildConfig(src=src, out=tmp_path / "out", recipe=recipe, executor="local", quiet=True)
    first = build_dataset(cfg)
    totals = first.manifest.totals
    assert totals.written == 3 and totals.failed == 1 and first.manifest.complete
    (failure,) = first.manifest.failures
    assert failure.path == "narrow.jpg" and failure.stage == "label" and failure.error == "ValueError"
    again = build_dataset(cfg)  # label failures may be the labeller's fault: the rerun tries that shard again
    assert again.images_this_run == 4 and again.manifest.totals.failed == 1


def test_odd_file_names_and_leftover_temp_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo = sorted(EXAMPLES.glob("*.jpg"))[0].read_bytes()
    (src / "plain.jpg").write_bytes(photo)
    (Path(os.fsdecode(bytes(src) + b"/caf\xe9 latin-1.jpg"))).write_bytes(photo)  # not valid UTF-8
    out = tmp_path / "out"
    assert build(src, out).ok
    (out / ".manifest.json.tmp-123-abcdef01").write_text("{")  # as if killed while writing the manifest
    result = build(src, out, overwrite=True)
    assert result.ok and result.manifest.totals.written == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_class_maps_allow_the_ignore_id_and_refuse_ids_past_the_classes():
    recipe = load_recipe(DEMO_RECIPE)
    spec = next(s for s in recipe.labelers if s.modality == "semseg")
    ctx = ShardContext(
        src="", out="", classes=None, image=recipe.image, encoding=recipe.encoding,
        labelers=recipe.labelers, batch_size=1, plan_id="",
    )  # fmt: skip
    n = spec.num_classes
    for ok in ([[0, n - 1]], [[255, 255]], [[255, n - 1]]):
        data, _ = _label_map(spec, np.array(ok, np.uint8), ctx)
        assert np.array_equal(decode_member("semseg.png", data), ok)
    for bad in ([[0, n]], [[255, n]]):
        with pytest.raises(ValueError, match=rf"class ids \[{n}\] >= num_classes {n} \(and not 255\)"):
            _label_map(spec, np.array(bad, np.uint8), ctx)
