"""A two-node Ray cluster on this machine (`ray start --head` and a second node process with its own
resources), the build connecting by address, images and dataset on an S3 server (moto, loopback): the worker
node is killed mid-run, and the build still completes with nothing lost and the same shards as an undisturbed
run. The driver only plans and monitors: the shards are written by the nodes, to the store."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import S3, s3_server

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
DEMO = ROOT / "manifests" / "demo.toml"
BUCKET = "mmforge-cluster"
COPIES = 3  # 36 images, one per shard: long enough to kill a node while shards are in flight

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server(BUCKET) as server:
        for copy in range(COPIES):
            for image in sorted(IMAGES.glob("*.*")):
                if image.suffix.lower() in (".jpg", ".png"):
                    server.fs.put_file(str(image), f"{BUCKET}/src/c{copy}-{image.name}")  # type: ignore[attr-defined]
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "cluster.toml"
    text = DEMO.read_text().replace("[shards]\nsize = 4", "[shards]\nsize = 1")
    text = text.replace("[runtime]\n", "[runtime]\ncpus_per_actor = 0.25\nmax_retries = 4\nshards_in_flight = 3\n")
    recipe.write_text(text)
    return recipe


def _build(out: str, recipe: Path, env: dict[str, str], *extra: str) -> list[str]:
    src = f"s3://{BUCKET}/src"
    code = "from pipeline.cli.app import app; app()"
    return [sys.executable, "-c", code, "build-dataset", src, out, "--recipe", str(recipe), "--quiet", *extra]


def _stats(s3: S3, prefix: str) -> dict[str, dict]:
    s3.fs.invalidate_cache()  # type: ignore[attr-defined]
    keys = [k for k in s3.fs.find(f"{BUCKET}/{prefix}/shards") if k.endswith(".stats.json")]  # type: ignore[attr-defined]
    return {k: json.loads(s3.fs.cat_file(k)) for k in keys}  # type: ignore[attr-defined]


def _tars(s3: S3, prefix: str) -> dict[str, bytes]:
    s3.fs.invalidate_cache()  # type: ignore[attr-defined]
    keys = [k for k in s3.fs.find(f"{BUCKET}/{prefix}/shards") if k.endswith(".tar")]  # type: ignore[attr-defined]
    return {k.rsplit("/", 1)[1]: s3.fs.cat_file(k) for k in keys}  # type: ignore[attr-defined]


def _node(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A Ray node process (`ray start --block`) in its own process group, so all of it can be killed."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.Popen(
        [ray, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _status(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True, timeout=60)


def _kill(node: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(30)


def test_a_build_survives_a_killed_worker_node(s3: S3, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    env = {
        **os.environ,
        **s3.env(),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "MMFORGE_CACHE": str(tmp_path / "cache"),
        "RAY_AUTH_MODE": "token",  # the cluster's own token, for its nodes and the driver only
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    reference = subprocess.run(
        _build(f"s3://{BUCKET}/ref", recipe, env, "--executor", "local"), env=env, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's socket paths live under it
    head = _node(["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"], env)
    # (every node on loopback: `_node` adds --node-ip-address=127.0.0.1)
    worker = None
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _status(address, env).returncode:
            assert time.monotonic() < deadline, "the head node did not start"
            time.sleep(1)
        worker = _node([f"--address={address}", "--num-cpus=2", '--resources={"second_node": 1}'], env)
        while (
            b"second_node"
            not in subprocess.run(["ray", "status", f"--address={address}"], env=env, capture_output=True).stdout
        ):
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(1)

        driver = subprocess.Popen(
            _build(f"s3://{BUCKET}/cluster", recipe, env, "--address", address),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        planned = COPIES * 12
        while len(done := _stats(s3, "cluster")) < 3:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            time.sleep(0.05)
        _kill(worker)  # mid-run: the node, its actors and its shard tasks are gone at once
        killed_at = len(done)
        out, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-3000:]
    finally:
        if worker is not None:
            _kill(worker)
        _kill(head)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # anything of this cluster still running
        shutil.rmtree(temp, ignore_errors=True)

    assert killed_at < planned  # the kill came while shards were still to be made
    stats = _stats(s3, "cluster")
    assert len(stats) == planned and sum(s["written"] for s in stats.values()) == planned  # nothing lost
    assert len({s["node"] for s in stats.values()}) == 2  # both nodes made shards before the kill
    ref, built = _tars(s3, "ref"), _tars(s3, "cluster")
    assert sorted(built) == sorted(ref) and all(built[k] == ref[k] for k in ref)  # the undisturbed run's bytes
    manifest = json.loads(s3.fs.cat_file(f"{BUCKET}/cluster/manifest.json"))  # type: ignore[attr-defined]
    assert manifest["complete"] and len(manifest["nodes"]) == 2
    assert sum(n["images"] for n in manifest["nodes"].values()) == planned
    assert f"{planned} of {planned} images written" in out
