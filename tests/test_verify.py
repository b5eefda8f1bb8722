"""`mmforge verify`: a good dataset passes; each kind of corruption is named (kind, shard, key, member).

One good dataset is built per session (6 photos, 2 per shard) and copied per test. "Resealed" corruptions
also rewrite the sha256/bytes in index.json and the stats marker, as a buggy writer would: then the defect
itself must be found, not just a checksum mismatch.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from pipeline.build.sink import FIXED_MTIME
from pipeline.cli.app import app
from pipeline.format.codecs import decode_depth, decode_semseg, encode_depth, encode_semseg
from pipeline.verify.verifier import VerifyConfig, VerifyReport, verify_dataset
from tests.conftest import EXAMPLES
from tests.test_build import build

pytestmark = pytest.mark.slow  # one session build of 6 photos with the smoke labelers (~10 s)
Members = list[tuple[str, bytes]]
S0, S1, S2 = "train-000000", "train-000001", "train-000002"
K0, K1, K2 = "00000000000", "00000000001", "00000100000"  # first two samples of shard 0, first of shard 1


_BUILT: dict[str, Path] = {}  # test_interop imports the fixture too: build once per session, not per module


@pytest.fixture(scope="session")
def good_dataset(tmp_path_factory) -> Path:
    """6 photos, 2 per shard, built once with the library and the local executor; never modified."""
    if "good" not in _BUILT:
        root = tmp_path_factory.mktemp("verify-good")
        src = root / "src"
        src.mkdir()
        for p in sorted(EXAMPLES.glob("*.jpg"))[:6]:
            shutil.copy(p, src / p.name)
        assert build(src, root / "out", shard_size=2).ok
        _BUILT["good"] = root / "out"
    return _BUILT["good"]


@pytest.fixture
def ds(good_dataset, tmp_path) -> Path:
    shutil.copytree(good_dataset, tmp_path / "ds")
    return tmp_path / "ds"


def verify(out: Path, deep: bool = False, workers: int = 1) -> VerifyReport:
    return verify_dataset(VerifyConfig(out=out, deep=deep, workers=workers, quiet=True))


def found(report: VerifyReport) -> set[tuple[str | None, ...]]:
    return {(d.kind, d.shard, d.key, d.member) for d in report.defects}


def kinds(report: VerifyReport) -> set[str]:
    return {d.kind for d in report.defects}


def tar_path(out: Path, shard: str) -> Path:
    return out / "shards" / f"{shard}.tar"


def read_members(path: Path) -> Members:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def write_members(path: Path, members: Members) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o444
            tar.addfile(info, io.BytesIO(data))


def reseal(out: Path, shard: str) -> None:
    """Record the shard's current sha256 and size in index.json and its stats, as a lying writer would."""
    data = tar_path(out, shard).read_bytes()
    sha, size = hashlib.sha256(data).hexdigest(), len(data)
    index = json.loads((out / "index.json").read_text())
    for entry in index["shards"]:
        if entry["name"] == shard:
            entry.update(sha256=sha, bytes=size)
    (out / "index.json").write_text(json.dumps(index))
    stats_path = out / "shards" / f"{shard}.stats.json"
    stats = json.loads(stats_path.read_text())
    stats.update(sha256=sha, bytes=size)
    stats_path.write_text(json.dumps(stats))


def rewrite(out: Path, shard: str, change: Callable[[Members], Members], sealed: bool = True) -> None:
    path = tar_path(out, shard)
    write_members(path, change(read_members(path)))
    if sealed:
        reseal(out, shard)


def replace_member(name: str, data: bytes) -> Callable[[Members], Members]:
    return lambda members: [(n, data if n == name else d) for n, d in members]


def member_offsets(path: Path) -> list[int]:
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers()]


# --- the good dataset --------------------------------------------------------------------------------------


def test_good_dataset_passes_fast_and_deep(good_dataset, tmp_path):
    fast = verify(good_dataset)
    assert fast.ok and fast.defects == [], fast.defects
    assert (fast.samples, fast.shards_checked, fast.shards_expected) == (6, 3, 3)
    assert fast.totals == {"inputs": 6, "written": 6, "failed": 0}
    deep = verify_dataset(VerifyConfig(out=good_dataset, deep=True, workers=2, quiet=True, json_path=tmp_path / "r"))
    assert deep.ok and deep.workers == 2 and deep.samples == 6 and deep.samples_per_s > 0
    assert json.loads((tmp_path / "r").read_text())["ok"] is True


def test_recorded_failures_are_listed_not_defects(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sorted(EXAMPLES.glob("*.jpg"))[0], src / "a.jpg")
    (src / "zero.jpg").write_bytes(b"")
    build(src, tmp_path / "out", shard_size=2)
    report = verify(tmp_path / "out", deep=True)
    assert report.ok, report.defects
    assert report.totals == {"inputs": 2, "written": 1, "failed": 1}
    assert [(f["shard"], f["path"]) for f in report.failures] == [(S0, "zero.jpg")]


def test_class_folders_require_cls(tmp_path):
    src = tmp_path / "src"
    for i, photo in enumerate(sorted(EXAMPLES.glob("*.jpg"))[:2]):
        (src / f"class_{i}").mkdir(parents=True)
        shutil.copy(photo, src / f"class_{i}" / photo.name)
    out = tmp_path / "out"
    assert build(src, out, shard_size=2).ok
    assert verify(out, deep=True).ok
    rewrite(out, S0, lambda ms: [(n, b"0" if n == f"{K1}.cls" else d) for n, d in ms if n != f"{K0}.cls"])
    assert found(verify(out, deep=True)) == {("missing_member", S0, K0, "cls"), ("bad_class", S0, K1, "cls")}


# --- tar structure -----------------------------------------------------------------------------------------


def test_truncated_at_member_boundary(ds):
    path = tar_path(ds, S0)
    cut = member_offsets(path)[4]  # the header of the second sample's first member
    path.write_bytes(path.read_bytes()[:cut])
    with tarfile.open(path) as tar:  # CPython's tarfile does not notice: it just sees one sample
        assert len(tar.getmembers()) == 4
    report = verify(ds)
    assert ("truncated", S0, None, None) in found(report)
    assert {"sha256_mismatch", "bytes_mismatch", "count_mismatch"} <= kinds(report)
    reseal(ds, S0)  # even when the records agree with the cut file, the tar walk finds it
    assert "truncated" in kinds(verify(ds)) and "sha256_mismatch" not in kinds(verify(ds))


def test_truncated_mid_member(ds):
    path = tar_path(ds, S0)
    cut = member_offsets(path)[5] + 512 + 100  # 100 bytes into the second sample's depth.png
    path.write_bytes(path.read_bytes()[:cut])
    reseal(ds, S0)
    report = verify(ds)
    assert ("truncated", S0, K1, "depth.png") in found(report)
    assert ("missing_member", S0, K1, "semseg.png") in found(report)
    assert "sha256_mismatch" not in kinds(report)


def test_flipped_byte_in_member_data(ds):
    path = tar_path(ds, S1)
    data = bytearray(path.read_bytes())
    data[member_offsets(path)[0] + 512 + 1000] ^= 0x01
    path.write_bytes(bytes(data))
    assert found(verify(ds)) == {("sha256_mismatch", S1, None, None)}


def test_flipped_byte_in_header(ds):
    path = tar_path(ds, S1)
    data = bytearray(path.read_bytes())
    data[member_offsets(path)[2] + 3] ^= 0x01  # inside the third member's name: the header checksum fails
    path.write_bytes(bytes(data))
    reseal(ds, S1)
    assert "bad_header" in kinds(verify(ds))


def test_trailing_garbage(ds):
    path = tar_path(ds, S2)
    path.write_bytes(path.read_bytes() + b"junk")
    reseal(ds, S2)
    assert found(verify(ds)) == {("trailing_data", S2, None, None)}


# --- members and keys --------------------------------------------------------------------------------------


def test_missing_member(ds):
    rewrite(ds, S0, lambda ms: [(n, d) for n, d in ms if n != f"{K1}.semseg.png"])
    assert found(verify(ds)) == {("missing_member", S0, K1, "semseg.png")}


def test_extra_member_and_unknown_suffix(ds):
    def add(ms: Members) -> Members:
        return [*ms[:4], (f"{K0}.cls", b"3"), (f"{K0}.pkl", b"\x80\x04."), *ms[4:]]

    rewrite(ds, S0, add)
    report = verify(ds)
    assert ("extra_member", S0, K0, "cls") in found(report)  # this dataset has no class folders
    assert ("bad_member_name", S0, K0, "pkl") in found(report)
    assert kinds(report) == {"extra_member", "bad_member_name"}


def test_non_adjacent_members(ds):
    def move_json_last(ms: Members) -> Members:
        return [m for m in ms if m[0] != f"{K0}.json"] + [m for m in ms if m[0] == f"{K0}.json"]

    rewrite(ds, S0, move_json_last)
    assert found(verify(ds)) == {("members_not_adjacent", S0, K0, None)}


def test_duplicate_key_across_shards(ds):
    first = read_members(tar_path(ds, S0))[:4]  # the whole sample K0
    rewrite(ds, S1, lambda ms: ms + first)
    report = verify(ds)
    assert ("duplicate_key", S1, K0, None) in found(report)
    assert ("count_mismatch", S1, None, None) in found(report)


def test_duplicate_key_within_a_shard(ds):
    rewrite(ds, S0, lambda ms: ms + ms[:4])
    assert ("duplicate_key", S0, K0, None) in found(verify(ds))


def test_bad_member_names(ds):
    rewrite(ds, S2, lambda ms: [*ms, ("nodot", b"x"), ("dir/00000200009.json", b"{}")])
    report = verify(ds)
    assert ("bad_member_name", S2, "nodot", "nodot") in found(report)
    assert any(d.kind == "bad_member_name" and "folder" in d.reason for d in report.defects)


# --- files around the shards -------------------------------------------------------------------------------


def test_missing_marker(ds):
    (ds / "shards" / f"{S1}.stats.json").unlink()
    report = verify(ds)
    assert ("missing_marker", S1, None, None) in found(report)


def test_missing_shard(ds):
    tar_path(ds, S2).unlink()
    (ds / "shards" / f"{S2}.stats.json").unlink()
    report = verify(ds)
    assert ("missing_shard", S2, None, None) in found(report)
    assert any(d.kind == "totals_mismatch" and "written" in d.reason for d in report.defects)


def test_stray_temp_file(ds):
    (ds / "shards" / f".{S0}.tar.tmp-123-abcdef12").write_bytes(b"partial")
    report = verify(ds)
    assert found(report) == {("stray_temp_file", None, None, f".{S0}.tar.tmp-123-abcdef12")}


def test_stray_temp_file_beside_the_manifest(ds):
    (ds / ".manifest.json.tmp-9-00000000").write_text("{")
    assert found(verify(ds)) == {("stray_temp_file", None, None, ".manifest.json.tmp-9-00000000")}


def test_extra_shard(ds):
    shutil.copy(tar_path(ds, S0), tar_path(ds, "train-000007"))
    assert found(verify(ds)) == {("extra_shard", "train-000007", None, None)}


def test_totals_and_failures_must_match_the_manifest(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["totals"].update(written=5, failed=1)  # consistent in itself, not with the shards
    manifest["failures"] = [{"path": "ghost.jpg", "error": "OSError", "message": "x", "stage": "read"}]
    (ds / "manifest.json").write_text(json.dumps(manifest))
    report = verify(ds)
    assert ("totals_mismatch", None, None, "manifest.json") in found(report)
    assert ("failures_mismatch", None, None, "manifest.json") in found(report)


def test_index_must_match_the_shard(ds):
    index = json.loads((ds / "index.json").read_text())
    index["shards"][1]["samples"] = 3
    index["total_samples"] += 1
    (ds / "index.json").write_text(json.dumps(index))
    report = verify(ds)
    assert ("count_mismatch", S1, None, None) in found(report)
    assert ("index_mismatch", None, None, "wids-index.json") in found(report)  # wids no longer agrees


# --- deep: member content ----------------------------------------------------------------------------------


def member(out: Path, shard: str, name: str) -> bytes:
    return dict(read_members(tar_path(out, shard)))[name]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_depth_replaced_by_8_bit(ds):
    depth = decode_depth(member(ds, S0, f"{K1}.depth.png"))
    rewrite(ds, S0, replace_member(f"{K1}.depth.png", png((depth >> 8).astype(np.uint8))))
    assert verify(ds).ok  # structure, names and records are fine: only decoding shows it
    report = verify(ds, deep=True)
    assert found(report) == {("wrong_pixel_format", S0, K1, "depth.png")}
    assert "16-bit" in report.defects[0].reason


def test_semseg_id_200(ds):
    ids = decode_semseg(member(ds, S1, f"{K2}.semseg.png")).copy()
    ids[0, :5] = 200
    rewrite(ds, S1, replace_member(f"{K2}.semseg.png", encode_semseg(ids)))
    report = verify(ds, deep=True)
    assert found(report) == {("class_id_out_of_range", S1, K2, "semseg.png")}
    assert "[200]" in report.defects[0].reason and "5 px" in report.defects[0].reason


def test_ignore_id_255_is_allowed(ds):
    ids = decode_semseg(member(ds, S1, f"{K2}.semseg.png")).copy()
    ids[0, :5] = 255
    rewrite(ds, S1, replace_member(f"{K2}.semseg.png", encode_semseg(ids)))
    assert verify(ds, deep=True).ok


def test_size_mismatch(ds):
    depth = decode_depth(member(ds, S0, f"{K0}.depth.png"))
    rewrite(ds, S0, replace_member(f"{K0}.depth.png", encode_depth(np.ascontiguousarray(depth[:-8, :-4]))))
    report = verify(ds, deep=True)
    assert found(report) == {("size_mismatch", S0, K0, "depth.png")}


def test_undecodable_member_and_bad_json(ds):
    meta = json.loads(member(ds, S2, "00000200000.json"))
    del meta["source"]
    meta["size"] = {"width": "wide", "height": 1}
    rewrite(ds, S2, replace_member("00000200000.json", json.dumps(meta).encode()))
    rewrite(ds, S2, replace_member("00000200001.rgb.jpg", b"\xff\xd8 not really a jpeg"))
    report = verify(ds, deep=True)
    assert ("undecodable", S2, "00000200001", "rgb.jpg") in found(report)
    reasons = [d.reason for d in report.defects if d.kind == "bad_json"]
    assert any("'source' missing" in r for r in reasons) and any("'size'" in r for r in reasons)


# --- the command line --------------------------------------------------------------------------------------


def test_cli_options_are_pinned():
    params = {p.name for p in get_command(app).commands["verify"].params}  # type: ignore[attr-defined]
    assert params == {"out", "deep", "json_path", "workers", "quiet"}


def test_cli_exit_codes(good_dataset, ds, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(good_dataset), "--quiet"])
    assert ok.exit_code == 0 and "OK" in ok.stdout, ok.output
    (ds / "shards" / f"{S1}.stats.json").unlink()
    report = tmp_path / "report.json"
    bad = runner.invoke(app, ["verify", str(ds), "--deep", "--quiet", "--workers", "1", "--json", str(report)])
    assert bad.exit_code == 1 and "missing_marker" in bad.stdout, bad.output
    doc = json.loads(report.read_text())
    assert doc["ok"] is False and doc["defects"][0]["kind"] == "missing_marker"
    assert doc["defects"][0]["shard"] == S1
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["verify", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "not a dataset" in empty.stderr
