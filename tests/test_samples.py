"""One shard reader, one member decoder, one drawing: `pipeline.format.samples.read_samples` and its rules
(adjacent members, only the codec table's, selection, errors to a policy or raised), every reader of shards
going through it and decoding through the codec table, and `pipeline.pictures.figures.picture` drawing every
map kind of the codec table."""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import pickle
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.format import samples as samples_module
from pipeline.format.codecs import CODECS, IGNORE_ID, dequantize_normal, quantize_normal
from pipeline.format.contract import sample_key
from pipeline.format.fs import NotRegularFileError
from pipeline.format.samples import SampleError, read_samples
from pipeline.format.stores import LocalPath
from pipeline.pictures.figures import DRAWINGS, fit_picture, picture
from pipeline.synth.rectangles import write_dataset

ROOT = Path(__file__).resolve().parents[1]
RGB, DEPTH, JSON = CODECS["rgb"].suffix, CODECS["depth"].suffix, CODECS["json"].suffix


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def members_of(key: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.{RGB}", f"{key} rgb".encode()), (f"{key}.{JSON}", b"{}")]


def collect() -> tuple[list[Exception], Callable[[Exception], None]]:
    errors: list[Exception] = []
    return errors, errors.append


# ------------------------------------------------------------------------------------------------ the reader


def test_samples_come_in_tar_order_with_only_the_codec_tables_members(tmp_path: Path) -> None:
    pickled = pickle.dumps({"never": "unpickled"})
    tar = write_tar(tmp_path / "s.tar", [*members_of("a"), ("a.x.pkl", pickled), ("b.cls", b"3"), *members_of("c")])
    got = list(read_samples(tar))
    assert [k for k, _ in got] == ["a", "b", "c"]
    assert got[0][1] == {RGB: b"a rgb", JSON: b"{}"} and got[1][1] == {"cls": b"3"}  # no .pkl, never read
    assert [k for k, _ in read_samples(LocalPath(tar))] == ["a", "b", "c"]  # a Location, a str and a Path alike
    assert [k for k, _ in read_samples(str(tar))] == ["a", "b", "c"]


def test_selection_by_ordinal_or_key_reads_no_further_than_the_last_selected(tmp_path: Path) -> None:
    good = write_tar(tmp_path / "good.tar", [m for k in "abcd" for m in members_of(k)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: 512 * 9 + 100])  # a, b whole; c's json header, its data cut short
    assert [k for k, _ in read_samples(good, ordinals=[3, 1])] == ["b", "d"]
    assert [k for k, _ in read_samples(good, keys=["c"])] == ["c"]
    assert list(read_samples(good, ordinals=[])) == [] and list(read_samples(good, keys=["nope"])) == []
    assert [k for k, _ in read_samples(cut, ordinals=[0, 1])] == ["a", "b"]  # stops before the damage
    with pytest.raises(tarfile.ReadError):
        list(read_samples(cut))
    with pytest.raises(TypeError, match="not both"):
        list(read_samples(good, ordinals=[0], keys=["a"]))


def test_members_of_a_sample_are_adjacent_and_unique(tmp_path: Path) -> None:
    split = write_tar(tmp_path / "split.tar", [*members_of("a"), *members_of("b"), (f"a.{DEPTH}", b"x")])
    twice = write_tar(tmp_path / "twice.tar", [*members_of("a"), (f"a.{RGB}", b"again"), *members_of("b")])
    nameless = write_tar(tmp_path / "nameless.tar", [("README", b"x"), *members_of("a")])
    for tar, reason in ((split, "not adjacent"), (twice, "appears twice"), (nameless, "no key.suffix form")):
        with pytest.raises(SampleError, match=reason):
            list(read_samples(tar))
        errors, on_error = collect()
        kept = [k for k, _ in read_samples(tar, on_error=on_error)]
        assert len(errors) == 1 and reason in str(errors[0]) and str(tar) in str(errors[0])
        assert kept == {split: ["a", "b"], twice: ["b"], nameless: ["a"]}[tar]  # the broken sample is dropped
    assert [k for k, _ in read_samples(split, ordinals=[1])] == ["b"]  # a later run is no sample of its own


def test_a_shard_that_breaks_or_cannot_be_opened_goes_to_on_error(tmp_path: Path) -> None:
    good = write_tar(tmp_path / "good.tar", [m for k in "abc" for m in members_of(k)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: 512 * 9 + 100])
    errors, on_error = collect()
    assert [k for k, _ in read_samples(cut, on_error=on_error)] == ["a", "b"]  # c broke: dropped
    assert len(errors) == 1 and isinstance(errors[0], tarfile.ReadError) and str(cut) in errors[0].args
    errors, on_error = collect()
    assert list(read_samples(tmp_path / "missing.tar", on_error=on_error)) == []
    assert len(errors) == 1 and isinstance(errors[0], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        list(read_samples(tmp_path / "missing.tar"))
    os.mkfifo(tmp_path / "fifo.tar")
    with pytest.raises(NotRegularFileError):  # refused, not opened (a FIFO would block forever)
        list(read_samples(tmp_path / "fifo.tar"))


def test_the_loader_counts_what_the_reader_reports(tmp_path: Path) -> None:
    from trainer.config import DataConfig, smoke_config
    from trainer.data.dataset import load_dataset
    from trainer.data.loader import Cursor, EpochPlan, ShardStream

    root = write_dataset(tmp_path / "d", [4])
    shard = root / "shards" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    stray = f"{sample_key(0, 1)}.{JSON}"
    kept = [m for m in members if m[0] != stray]
    at = next(i for i, (name, _) in enumerate(kept) if name.startswith(sample_key(0, 3)))
    write_tar(shard, kept[:at] + [m for m in members if m[0] == stray] + kept[at:])  # sample 1's json after 2
    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=1)
    data = DataConfig(batch_size=3, workers=0, shuffle_buffer=1)
    info = load_dataset(root, allow_defects=True)
    stream = ShardStream(info=info, data=data, model=smoke_config().model, plan=plan, cursors=[Cursor()])
    (batch,) = list(stream.batches(0))
    assert batch["__cursor__"]["corrupt"] == 1  # the stray run, counted; sample 1 itself is read (no json needed)


# ------------------------------------------------------------------------------------------------ one of each


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("readers") / "data", [3, 3])


def _loader(root: Path, tmp: Path) -> None:
    from trainer.config import DataConfig, smoke_config
    from trainer.data.dataset import load_dataset
    from trainer.data.loader import Cursor, EpochPlan, ShardStream

    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=1)
    data = DataConfig(batch_size=2, workers=0, shuffle_buffer=2)
    info = load_dataset(root)
    assert (
        len(
            list(
                ShardStream(info=info, data=data, model=smoke_config().model, plan=plan, cursors=[Cursor()]).batches(0)
            )
        )
        == 1
    )


def _evaluation(root: Path, tmp: Path) -> None:
    from trainer.data.dataset import load_dataset
    from trainer.transfer.config import load_finetune_config
    from trainer.transfer.finetune import eval_batches, num_classes_of

    cfg = load_finetune_config(ROOT / "trainer" / "configs" / "finetune-cls-smoke.toml")
    info = load_dataset(root)
    assert len(next(eval_batches(info, cfg, num_classes_of(info, cfg), 2))["cls"]) == 2


def _preview(root: Path, tmp: Path) -> None:
    from pipeline.pictures.preview import PreviewConfig, preview

    assert preview(PreviewConfig(data=root, n=2, out=tmp / "p.png", tile=32)).rows == 2


def _reconstruct(root: Path, tmp: Path) -> None:
    from trainer.pretrain.reconstruct import read_sample

    arrays, _ = read_sample(f"{root}:train-000001/{sample_key(1, 2)}")
    assert set(arrays) >= {"rgb", "depth", "semseg"}


def _figure_sample(root: Path, tmp: Path) -> None:
    from trainer.config import smoke_config
    from trainer.data.dataset import load_dataset
    from trainer.pretrain.reconstruct import first_sample

    inputs, _ = first_sample(load_dataset(root), smoke_config().model)
    assert "rgb" in inputs


READERS = {
    "loader": _loader,
    "evaluation": _evaluation,
    "preview": _preview,
    "reconstruct": _reconstruct,
    "pretraining figure": _figure_sample,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_reads_through_the_one_reader_and_decodes_through_the_codec_table(
    reader: str, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks, decodes = Counter[str](), Counter[str]()
    walk = samples_module._walk

    def counted_walk(*args: object, **kw: object) -> Iterator[tuple[str, dict[str, bytes]]]:
        walks["walk"] += 1
        return walk(*args, **kw)  # type: ignore[arg-type]

    def counted(name: str, decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
        def decoder(data: bytes) -> object:
            decodes[name] += 1
            return decode(data)

        return decoder

    monkeypatch.setattr(samples_module, "_walk", counted_walk)
    for name, codec in list(CODECS.items()):
        monkeypatch.setitem(CODECS, name, dataclasses.replace(codec, decoder=counted(name, codec.decoder)))
    READERS[reader](dataset, tmp_path)
    assert walks["walk"] >= 1, "read its shard past the one reader"
    assert decodes["rgb"] >= 1, f"decoded past the codec table: {decodes}"


def _python_files() -> Iterator[Path]:
    for folder in ("pipeline", "trainer", "labelers", "benchmarks"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_other_code_opens_a_shard_or_decodes_a_member_by_itself() -> None:
    """Shards are read only by `pipeline.format.samples` (the verifier's block walk never calls tarfile.open;
    the shard sink writes); members are decoded only through the codec table; arrays are drawn only by
    `figures.picture`."""
    codec_functions = {f"decode_{n}" for n in ("rgb", "depth", "semseg", "normal", "json", "cls")}
    drawing = {"colormap", "palette_rgb", "fit_tile"}
    found = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            tar_open = (
                isinstance(node, ast.Attribute) and node.attr == "open" and getattr(node.value, "id", "") == "tarfile"
            )
            if tar_open and rel not in ("pipeline/format/samples.py", "pipeline/build/sink.py"):
                found.append(f"{rel}:{node.lineno}: tarfile.open")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("webdataset"):
                found.append(f"{rel}:{node.lineno}: imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline.format.codecs":
                found += [f"{rel}:{node.lineno}: {a.name}" for a in node.names if a.name in codec_functions]
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline.pictures.figures":
                found += [f"{rel}:{node.lineno}: draws with {a.name}" for a in node.names if a.name in drawing]
    assert found == []


# ------------------------------------------------------------------------------------------------ the drawing


def example(codec_name: str) -> np.ndarray:
    codec = CODECS[codec_name]
    assert codec.dtype is not None and codec.channels is not None
    shape = (6, 8) if codec.channels == 1 else (6, 8, codec.channels)
    return (np.arange(np.prod(shape)).reshape(shape) % 200).astype(codec.dtype)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_kind_is_drawn(name: str) -> None:
    codec = CODECS[name]
    if not codec.is_map:
        assert codec.kind not in DRAWINGS
        with pytest.raises(ValueError, match="not drawn"):
            picture(np.zeros((2, 2)), codec.kind)
        return
    drawn = picture(example(name), codec.kind, [10, 20, 30] * 256)
    assert drawn.dtype == np.uint8 and drawn.shape == (6, 8, 3)
    assert fit_picture(drawn, codec.kind, 32).size == (32, 32)


def test_each_kind_is_drawn_as_the_data_contract_says() -> None:
    rgb = example("rgb")
    assert np.array_equal(picture(rgb, "image"), rgb)  # rgb as it is
    assert np.abs(picture(rgb / 255.0, "image").astype(int) - rgb).max() <= 1  # a model's [0, 1] rgb
    ids = np.array([[0, 1], [2, IGNORE_ID]], np.uint8)
    palette = [200, 10, 10, 10, 200, 10, 10, 10, 200] + [77] * (256 * 3 - 9)  # even a palette colour at 255
    assert picture(ids, "class_map", palette).tolist() == [[[200, 10, 10], [10, 200, 10]], [[10, 10, 200], [0, 0, 0]]]
    assert DRAWINGS["class_map"].sharp and not DRAWINGS["value_map"].sharp
    depth = np.linspace(0, 65535, 100).reshape(10, 10).astype(np.uint16)
    drawn = picture(depth, "value_map")
    assert (drawn[0, 0] == drawn[0, 1]).all() and (drawn[-1, -1] == drawn[-1, -2]).all()  # 2-98 %: ends clipped
    assert drawn[-1, -1].sum() > drawn[0, 0].sum()  # bright = larger
    stored = quantize_normal(np.random.default_rng(0).normal(size=(5, 7, 3)))[0]
    assert np.array_equal(picture(stored, "vector_map"), stored)  # as stored
    assert np.array_equal(picture(dequantize_normal(stored), "vector_map"), stored)  # a model's vectors likewise
