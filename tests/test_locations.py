"""URLs in path arguments: file:// is a local path; every other scheme is refused with exit 2, nothing written."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.format.locations import LocalPath, LocationError, local_location
from pipeline.format.schema import ConfigError
from pipeline.format.stores import Location, location
from tests.s3_server import S3, s3_server
from trainer.train import parse_args

ROOT = Path(__file__).resolve().parents[1]
IMAGES = str(ROOT / "examples" / "images")
DEMO = str(ROOT / "manifests" / "demo.toml")
SMOKE = str(ROOT / "trainer" / "configs" / "smoke.toml")
LOCAL_ONLY = "this option takes a local path"
REFUSED = {  # refused by every command: not installed (gcsfs is not a dependency), or no such protocol
    "gs://bucket/out": "gs:// protocol is not installed here",
    "nosuchproto://bucket/out": "unknown protocol 'nosuchproto'",
}
STORES = ("s3://bucket/out", "memory://bucket/out")  # installed protocols


def test_plain_paths_and_file_urls_are_local(tmp_path: Path) -> None:
    assert local_location("out/demo") == Path("out/demo")
    assert local_location(f"file://{tmp_path}/a%20b") == tmp_path / "a b"
    assert local_location(f"file://localhost{tmp_path}") == tmp_path
    assert local_location(f"file:{tmp_path}") == tmp_path
    assert local_location("C:/data") == Path("C:/data")  # a drive letter is not a scheme
    with pytest.raises(LocationError, match="host 'elsewhere' is not it"):
        local_location("file://elsewhere/data")
    with pytest.raises(LocationError, match="needs a path"):
        local_location("file://")
    with pytest.raises(LocationError, match="query or fragment"):
        local_location(f"file://{tmp_path}/a#b")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def store_commands(url: str) -> list[list[str]]:
    """Each command with `url` in one of its path arguments that take a store (the others valid)."""
    return [
        ["build-dataset", IMAGES, url, "--recipe", DEMO, "--executor", "local"],
        ["build-dataset", url, "out-never", "--recipe", DEMO, "--executor", "local"],
        ["verify", url],
        ["preview", url],
        ["preview", "data-never", "--out", url],
        ["pretrain", "--data", url, "--out", "run-never", "--config", SMOKE],
        ["pretrain", "--data", "data-never", "--out", url, "--config", SMOKE],
        ["finetune", "--data", "data-never", "--out", "run-never", "--init", url],
        ["export", url, "out-never"],
        ["export", "ckpt-never.pt", url],
        ["reconstruct", "ckpt-never.pt", "--out", url],
    ]


def local_commands(url: str) -> list[list[str]]:
    """Each command with `url` in one of its path arguments that take local files only."""
    return [
        ["build-dataset", IMAGES, "out-never", "--recipe", url],
        ["pretrain", "--data", "data-never", "--out", "run-never", "--config", url],
        ["verify", "data-never", "--json", url],
        ["reconstruct", "ckpt-never.pt", "--image", url],
        ["reconstruct", "ckpt-never.pt", "--sample", "d:s/k", "--mask", url],
    ]


def flat(text: str) -> str:
    """Rich's error box taken off: the message as one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def refused(args: list[str], reason: str, folder: Path) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert reason in flat(result.output), (args, result.output)
    assert files_under(folder) == set(), (args, files_under(folder))  # no folder named "s3:" or any other


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_unknown_or_uninstalled_schemes_exit_2_and_write_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for args in store_commands(url) + local_commands(url):
        refused(args, REFUSED[url], tmp_path)


@pytest.mark.parametrize("url", STORES)
def test_options_that_take_local_paths_refuse_stores(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in local_commands(url):
        refused(args, LOCAL_ONLY, tmp_path)


def test_installed_protocols_that_are_not_object_stores_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # memory:// is installed (fsspec's own) but not a store others can see
    for args in store_commands("memory://bucket/out"):
        refused(args, "memory:// is not an object store with all-or-nothing uploads", tmp_path)


BLOCK_S3FS = "import sys; sys.modules['s3fs'] = None; from pipeline.cli.app import app; app()"  # s3fs not importable


@pytest.mark.parametrize("url", ["s3://bucket/out", "s3:/bucket/out"])
def test_s3_without_its_driver_exits_2_and_writes_nothing(url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for args in store_commands(url):
        result = subprocess.run(
            [sys.executable, "-c", BLOCK_S3FS, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 2, (args, result.stderr)
        assert "s3:// protocol is not installed here (Install s3fs" in flat(result.stderr), result.stderr
        assert files_under(tmp_path) == set(), (args, files_under(tmp_path))


def test_torchrun_entry_point_refuses_urls_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "gs://bucket/data", "--out", "run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "gs://bucket/data" in err and "gs:// protocol is not installed" in err


def test_a_fresh_process_refuses_before_writing(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from pipeline.cli.app import main; main()", "build-dataset", IMAGES, "gs://b/out"]
    done = subprocess.run(
        [*command, "--recipe", DEMO], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "gs://b/out" in done.stderr and files_under(tmp_path) == set()


# ------------------------------------------------------------------ one Location, two kinds, the same operations


@pytest.fixture(scope="module")
def moto() -> Iterator[S3]:
    with s3_server("mmforge-locations") as server:
        yield server


@pytest.fixture(params=["folder", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """An empty location of each kind: a local folder, and a prefix of the S3 API on loopback."""
    if request.param == "folder":
        return location(str(tmp_path / "place"))
    request.getfixturevalue("moto")
    return location(f"s3://mmforge-locations/{tmp_path.name}/place/")  # resolved once, trailing slash dropped


def test_every_operation_means_the_same_on_a_folder_and_on_a_store(where: Location) -> None:
    spelled = str(where)
    assert not spelled.endswith("/") and location(where) is where and location(spelled) == where
    assert pickle.loads(pickle.dumps(where)) == where  # what a shard task or a loader worker receives
    assert str(where.join("a/b.txt")) == f"{spelled}/a/b.txt" and where.join("a").inside(where)
    assert where.inside(where) and not where.inside(where.join("a")) and where.absolute().inside(where.absolute())
    where.check_writable()
    assert not where.exists(folder=True)

    with where.published() as folder:  # a folder written here, then visible there whole
        (folder / "docs").mkdir(parents=True)
        (folder / "shards").mkdir()  # as the build's driver makes it (a store has every prefix: nothing sent)
        (folder / "docs" / "a.json").write_bytes(b"{}")
        (folder / ".hidden").write_bytes(b"h")
        (folder / "img.jpg").write_bytes(b"\xff\xd8" * 10)
    assert where.is_folder() and where.exists(folder=True)
    walked = {rel: size for rel, size, _ in where.walk(lambda name: name.startswith("."))}
    assert walked == {"docs/a.json": 2, "img.jpg": 20}
    with where.join("img.jpg").reading(block_size=4) as (f, size):
        assert (f.read(), size) == (b"\xff\xd8" * 10, 20)
    with where.join("docs/a.json").fetched() as local:
        assert local.read_bytes() == b"{}"
    with where.join("one.bin").published() as local:
        local.write_bytes(b"1")
    assert where.join("one.bin").exists(folder=False)

    stage = where.stage("tests", "copy")  # the lasting stage: documents in, finished files out
    stage.fetch(lambda rel: rel.startswith("docs/"), stage.listing())
    assert (stage.root / "docs" / "a.json").read_bytes() == b"{}"
    (stage.root / "new.json").write_bytes(b"[]")
    stage.publish(stage.root / "new.json")
    assert (stage.root / "new.json").is_file()  # kept: the stage goes on holding it
    with where.join("new.json").reading() as (f, _):
        assert f.read() == b"[]"
    stage.remove([rel for rel in stage.listing() if rel == "one.bin"])
    assert "one.bin" not in stage.listing()  # a folder lists nothing beyond its stage: it is the stage

    with where.scratch("mmforge-test-") as scratch:  # a shard task's stage
        shards = scratch.folder("shards")
        assert shards.is_dir()
        (shards / "s.tar").write_bytes(b"tar")
        scratch.publish(shards / "s.tar", keep=False)
    with where.join("shards/s.tar").reading() as (f, size):
        assert (f.read(), size) == (b"tar", 3)


def test_what_only_one_kind_has(where: Location, tmp_path: Path) -> None:
    """A store names no local path and has every prefix; a local folder must exist to be one."""
    if isinstance(where, LocalPath):
        assert where.local_path("never") == where.path and os.fspath(where) == str(where)
        assert where.stage("any", "part").root == where.path and not where.is_folder()
        assert where.stage("any", "part").published_to == ""
    else:
        with pytest.raises(ConfigError, match="local files only, please"):
            where.local_path("local files only, please")
        assert where.is_folder() and where.stage("runs", "rank-0").published_to == str(where)
        stage = where.stage("runs", "rank-0")
        assert stage.root.name == "rank-0" and stage.lock_root == stage.root.parent
        with pytest.raises(ConfigError, match="the bucket 'no-such-bucket' does not exist"):
            location("s3://no-such-bucket/x").check_writable()


def test_no_code_outside_the_format_wing_asks_whether_a_location_is_a_url() -> None:
    """The seam is the Location object: only pipeline/format knows that stores exist."""
    asking = re.compile(r"\bis_url\b|\bRemoteURL\b|\bscheme_of\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("pipeline", "trainer", "labelers", "benchmarks")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (ROOT / "pipeline" / "format") not in path.parents
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if asking.search(line)
    ]
    assert found == []
