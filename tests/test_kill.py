"""kill -9 at any moment leaves nothing that looks complete but is not; rerunning finishes the same shards."""

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO_RECIPE, EXAMPLES

pytestmark = pytest.mark.slow


def command(out: Path, executor: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.cli.app",
        "build-dataset",
        str(EXAMPLES),
        str(out),
        "--recipe",
        str(DEMO_RECIPE),
        "--shard-size",
        "1",
        "--executor",
        executor,
        "--quiet",
    ]


def run_to_end(out: Path, executor: str) -> None:
    done = subprocess.run(command(out, executor), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


def markers(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.stats.json")) if (out / "shards").is_dir() else []


def kill_mid_run(out: Path, executor: str) -> int:
    """Start a build in its own process group and SIGKILL the group once 2 shards are done."""
    proc = subprocess.Popen(
        command(out, executor), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while len(markers(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return len(markers(out))


def assert_published_tars_are_whole(out: Path) -> None:
    for tar_path in (out / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        assert names and names[-1].endswith((".json", ".cls")), tar_path  # ends with a whole sample


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_sigkill_then_rerun_gives_the_uninterrupted_shards(tmp_path, executor):
    reference = tmp_path / "reference"
    run_to_end(reference, executor)
    expected = {p.name: p.read_bytes() for p in (reference / "shards").glob("*.tar")}
    assert len(expected) == 12

    out = tmp_path / "out"
    done_at_kill = kill_mid_run(out, executor)
    assert 2 <= done_at_kill < 12, f"the kill did not land mid-run ({done_at_kill} shards done)"
    assert_published_tars_are_whole(out)

    run_to_end(out, executor)
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == expected
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
