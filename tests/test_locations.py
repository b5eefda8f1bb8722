"""URLs in path arguments: file:// is a local path; every other scheme is refused with exit 2, nothing written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.locations import LocationError, local_location
from trainer.train import parse_args

ROOT = Path(__file__).resolve().parents[1]
IMAGES = str(ROOT / "examples" / "images")
DEMO = str(ROOT / "manifests" / "demo.toml")
SMOKE = str(ROOT / "trainer" / "configs" / "smoke.toml")
IN_PLACE = "locations are not read or written in place yet"
REFUSED = {  # s3 / gs: refused as not installed here, or (where s3fs / gcsfs are) as not read in place yet
    "s3://bucket/out": ("s3:// protocol is not installed here (Install s3fs", IN_PLACE),
    "s3:/bucket/out": ("s3:// protocol is not installed here (Install s3fs", IN_PLACE),
    "gs://bucket/out": ("gs:// protocol is not installed here", IN_PLACE),
    "nosuchproto://bucket/out": ("unknown protocol 'nosuchproto'",),
    "memory://bucket/out": (IN_PLACE,),
}


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


def commands(url: str) -> list[list[str]]:
    """Each command with `url` in one of its path arguments (the others valid)."""
    return [
        ["build-dataset", IMAGES, url, "--recipe", DEMO, "--executor", "local"],
        ["build-dataset", url, "out-never", "--recipe", DEMO, "--executor", "local"],
        ["verify", url],
        ["preview", url],
        ["pretrain", "--data", url, "--out", "run-never", "--config", SMOKE],
        ["pretrain", "--data", "data-never", "--out", url, "--config", SMOKE],
        ["finetune", "--data", "data-never", "--out", "run-never", "--init", url],
        ["export", url, "out-never"],
        ["reconstruct", "ckpt-never.pt", "--out", url],
    ]


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_other_schemes_exit_2_and_write_nothing(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in commands(url):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
        assert any(reason in text for reason in REFUSED[url]), (args, result.output)
        assert files_under(tmp_path) == set(), (args, files_under(tmp_path))  # no folder named "s3:" or any other


def test_torchrun_entry_point_refuses_urls_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "s3://bucket/data", "--out", "run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "s3://bucket/data" in err and ("Install s3fs" in err or IN_PLACE in err)


def test_a_fresh_process_refuses_before_writing(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "build-dataset", IMAGES, "s3://b/out"]
    done = subprocess.run(
        [*command, "--recipe", DEMO], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "s3://b/out" in done.stderr and files_under(tmp_path) == set()
