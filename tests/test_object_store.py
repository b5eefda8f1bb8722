"""Object stores end to end, on a real S3 API server on loopback (moto, started here): build from s3:// to
s3://, verify s3://, pretrain reading s3:// and checkpointing to s3://, resume; an upload killed midway
leaves no visible shard and a rerun completes it with the same bytes; a two-node torchrun reads s3://."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.format.stores import location
from tests.s3_server import S3, StallingRelay, s3_server
from trainer.engine.run import RunOptions
from trainer.train import build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
DEMO = str(ROOT / "manifests" / "demo.toml")
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"
BUCKET = "mmforge-test"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server(BUCKET) as server:
        server.fs.put(str(IMAGES) + "/", f"{BUCKET}/src/", recursive=True)  # type: ignore[attr-defined]
        yield server


def objects(s3: S3, prefix: str) -> dict[str, bytes]:
    fs = s3.fs
    fs.invalidate_cache()  # type: ignore[attr-defined]
    keys = fs.find(f"{BUCKET}/{prefix}")  # type: ignore[attr-defined]
    return {k.removeprefix(f"{BUCKET}/{prefix}/"): fs.cat_file(k) for k in keys}  # type: ignore[attr-defined]


def members(tar_bytes: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_build_verify_pretrain_resume_through_s3(s3: S3, tmp_path: Path) -> None:
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/data", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0, out
    stored = objects(s3, "data")
    tars = sorted(k for k in stored if k.endswith(".tar"))
    assert len(tars) == 3 and {"mmforge.json", "plan/plan.json", "manifest.json", "index.json"} <= set(stored)
    assert not any(".tmp-" in k or k.endswith(".lock") for k in stored)  # only published files, no temps or lock
    manifest = json.loads(stored["manifest.json"])
    assert (
        manifest["complete"] and manifest["totals"]["written"] == 12 and manifest["source"]["path"].startswith("s3://")
    )
    for k in tars:
        index = {s["url"]: s for s in json.loads(stored["index.json"])["shards"]}
        assert hashlib.sha256(stored[k]).hexdigest() == index[k]["sha256"]

    # the same images built from a local folder into a local folder: the same members (the json's source
    # fingerprint differs: object versions instead of mtimes)
    code, out = cli("build-dataset", str(IMAGES), str(tmp_path / "local"), "--recipe", DEMO, "--executor", "local")
    assert code == 0, out
    for k in tars:
        remote, local = members(stored[k]), members((tmp_path / "local" / k).read_bytes())
        assert remote.keys() == local.keys()
        assert all(remote[m] == local[m] for m in remote if not m.endswith(".json"))

    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/data", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0 and "0 processed this run" in out, out  # resumed from the store: nothing to redo
    assert objects(s3, "data")[tars[0]] == stored[tars[0]]

    code, out = cli("verify", f"s3://{BUCKET}/data", "--deep")
    assert code == 0 and f"s3://{BUCKET}/data: OK (deep): 12 samples in 3/3 shards" in out, out

    torch.set_num_threads(1)
    cfg = build_config(SMOKE, steps=10)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, checkpoint_every=5))
    data = f"s3://{BUCKET}/data"
    first = pretrain(cfg, RunOptions(data=location(data), out=location(f"s3://{BUCKET}/run"), device="cpu"))
    assert first.steps == 10 and first.published == f"s3://{BUCKET}/run"
    run = objects(s3, "run")
    assert {"checkpoint-5.pt", "checkpoint-10.pt", "checkpoint-last.pt", "metrics.jsonl", "config.json"} <= set(run)
    assert run["checkpoint-last.pt"] == run["checkpoint-10.pt"]

    # killed after step 7, as far as the store knows: its last checkpoint is step 5
    s3.fs.pipe_file(f"{BUCKET}/resumed/checkpoint-last.pt", run["checkpoint-5.pt"])  # type: ignore[attr-defined]
    s3.fs.pipe_file(f"{BUCKET}/resumed/checkpoint-5.pt", run["checkpoint-5.pt"])  # type: ignore[attr-defined]
    resumed = pretrain(cfg, RunOptions(data=location(data), out=location(f"s3://{BUCKET}/resumed"), device="cpu"))
    assert resumed.steps == 10 and len(resumed.losses) == 5
    assert resumed.losses == pytest.approx(first.losses[5:], rel=1e-5, abs=1e-6)  # step-exact from the store
    after = objects(s3, "resumed")
    assert after["checkpoint-last.pt"] == after["checkpoint-10.pt"] and "checkpoint-5.pt" in after
    assert [json.loads(line)["step"] for line in after["metrics.jsonl"].decode().splitlines()] == list(range(6, 11))

    # pictures and exports from and to the store
    code, out = cli(
        "preview", data, "--n", "3", "--out", f"s3://{BUCKET}/pics/grid.png", "--html", f"s3://{BUCKET}/pics/page"
    )
    assert code == 0 and "3 samples" in out, out
    pics = objects(s3, "pics")
    assert pics["grid.png"].startswith(b"\x89PNG") and b"<html" in pics["page/index.html"]
    ckpt = f"s3://{BUCKET}/run/checkpoint-last.pt"
    code, out = cli("export", ckpt, f"s3://{BUCKET}/timm")
    assert code == 0, out
    assert {"config.json", "model.safetensors"} <= set(objects(s3, "timm"))
    code, out = cli("export", ckpt, f"s3://{BUCKET}/timm")
    assert code == 2 and "exists" in out, out
    sample = f"{data}:train-000000/00000000000"  # a sample of the store dataset
    code, out = cli("reconstruct", ckpt, "--sample", sample, "--out", f"s3://{BUCKET}/pics/reconstruction.png")
    assert code == 0 and f"wrote s3://{BUCKET}/pics/reconstruction.png" in out, out
    assert objects(s3, "pics")["reconstruction.png"].startswith(b"\x89PNG")


def test_verify_s3_finds_what_was_changed_on_the_store(s3: S3) -> None:
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/forged", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0, out
    stored = objects(s3, "forged")
    tar = sorted(k for k in stored if k.endswith(".tar"))[1]
    body = bytearray(stored[tar])
    body[700] ^= 0xFF  # one byte of the first member's data
    s3.fs.pipe_file(f"{BUCKET}/forged/{tar}", bytes(body))  # type: ignore[attr-defined]
    s3.fs.pipe_file(f"{BUCKET}/forged/shards/notes.txt", b"not a shard")  # type: ignore[attr-defined]
    code, out = cli("verify", f"s3://{BUCKET}/forged")
    assert code == 1, out
    assert "sha256_mismatch" in out and "unexpected_file" in out and "shards/notes.txt" in out, out
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/forged", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 2 and "objects this dataset did not write: shards/notes.txt" in out, out


def test_s3_prefix_with_foreign_objects_is_refused_and_untouched(s3: S3) -> None:
    s3.fs.pipe_file(f"{BUCKET}/theirs/report.pdf", b"%PDF")  # type: ignore[attr-defined]
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/theirs", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 2 and "has no mmforge.json marker" in out, out
    assert objects(s3, "theirs") == {"report.pdf": b"%PDF"}


def _build_cmd(out: str) -> list[str]:
    cli_main = "from pipeline.cli.app import app; app()"
    src = f"s3://{BUCKET}/src"
    return [
        sys.executable,
        "-c",
        cli_main,
        "build-dataset",
        src,
        out,
        "--recipe",
        DEMO,
        "--executor",
        "local",
        "--quiet",
    ]


def test_killed_upload_leaves_no_shard_and_a_rerun_makes_the_same_bytes(s3: S3, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMFORGE_CACHE": str(tmp_path / "cache")}
    reference = subprocess.run(
        _build_cmd(f"s3://{BUCKET}/ref"), env={**env, **s3.env()}, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    host, port = s3.endpoint.removeprefix("http://").split(":")
    relay = StallingRelay((host, int(port)), marker=b"/killed/shards/train-000001.tar", after=6000)
    proc = subprocess.Popen(
        _build_cmd(f"s3://{BUCKET}/killed"),
        env={**env, **s3.env(relay.endpoint)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert relay.stalled.wait(180), "the upload of train-000001 never started"
        partial = objects(s3, "killed")
        assert "shards/train-000000.tar" in partial  # the shard before it was published whole
        assert "shards/train-000001.tar" not in partial and "shards/train-000001.stats.json" not in partial
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        relay.close()
    assert "shards/train-000001.tar" not in objects(s3, "killed")

    rerun = subprocess.run(_build_cmd(f"s3://{BUCKET}/killed"), env={**env, **s3.env()}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ref, killed = objects(s3, "ref"), objects(s3, "killed")
    tars = sorted(k for k in ref if k.endswith(".tar"))
    assert tars == sorted(k for k in killed if k.endswith(".tar")) and len(tars) == 3
    assert all(ref[k] == killed[k] for k in tars)  # identical bytes
    assert "8 processed this run" in rerun.stdout, rerun.stdout  # train-000000 (4 images) was kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_node_torchrun_reads_disjoint_s3_shards(s3: S3, tmp_path: Path) -> None:
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/ddp", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0, out
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
            "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", "s3-test", "-m", "trainer.train", "--data", f"s3://{BUCKET}/ddp",
            "--out", f"s3://{BUCKET}/ddp-run", "--config", str(SMOKE), "--device", "cpu", "--steps", "3",
            "--workers", "1",
        ]  # fmt: skip
        env = {
            **os.environ,
            **s3.env(),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "MMFORGE_CACHE": str(tmp_path / f"node{node}"),  # nothing shared between the nodes but the store
        }
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    logs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        logs.append(err)
    seen = {}
    for node, err in enumerate(logs):
        found = re.search(r"epoch 0: (\d+) micro-batches from shards (\S.*)$", err, re.MULTILINE)
        assert found, err[-2000:]
        seen[node] = (int(found[1]), set(found[2].replace(" | ", ",").split(",")))
    assert seen[0][0] == seen[1][0] > 0  # the same number of batches on both nodes
    assert seen[0][1] and seen[1][1] and not seen[0][1] & seen[1][1]  # disjoint shards
    run = objects(s3, "ddp-run")
    assert "checkpoint-last.pt" in run
    assert torch.load(io.BytesIO(run["checkpoint-last.pt"]), weights_only=True)["world_size"] == 2


def test_a_build_killed_while_publishing_its_plan_can_be_run_again(s3: S3) -> None:
    """A planner killed after some plan entries but before the header: the prefix stays ours to finish."""
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/replan", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0, out
    fs = s3.fs
    for key in fs.find(f"{BUCKET}/replan"):  # type: ignore[attr-defined]
        if not (key.endswith("mmforge.json") or "/plan/train-" in key):
            fs.rm(key)  # type: ignore[attr-defined]
    fs.pipe_file(f"{BUCKET}/replan/plan/train-000007.json", b"{}")  # type: ignore[attr-defined]  # of a bigger plan
    code, out = cli(
        "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/replan", "--recipe", DEMO, "--executor", "local"
    )
    assert code == 0, out
    assert "plan/train-000007.json" not in objects(s3, "replan")
    code, out = cli("verify", f"s3://{BUCKET}/replan")
    assert code == 0, out


def test_foreign_objects_are_refused_before_anything_is_downloaded(s3: S3, tmp_path: Path) -> None:
    s3.fs.pipe_file(f"{BUCKET}/mixed/images/a.jpg", b"\xff\xd8" + bytes(1000))  # type: ignore[attr-defined]
    s3.fs.pipe_file(f"{BUCKET}/mixed/index.json", b"{}")  # type: ignore[attr-defined]
    cache = tmp_path / "cache"
    os.environ["MMFORGE_CACHE"], saved = str(cache), os.environ.get("MMFORGE_CACHE")
    try:
        code, out = cli(
            "build-dataset", f"s3://{BUCKET}/src", f"s3://{BUCKET}/mixed", "--recipe", DEMO, "--executor", "local"
        )
    finally:
        os.environ["MMFORGE_CACHE"] = saved or ""
    assert code == 2 and "has no mmforge.json marker" in out, out
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]  # nothing copied here


def test_a_missing_bucket_or_object_is_a_one_line_error(s3: S3) -> None:
    code, out = cli("build-dataset", str(IMAGES), "s3://no-such-bucket/out", "--recipe", DEMO, "--executor", "local")
    assert code == 2 and "the bucket 'no-such-bucket' does not exist" in out, out
    for args in (["export", f"s3://{BUCKET}/none.pt", "s3://no-such-bucket/x"], ["verify", f"s3://{BUCKET}/none"]):
        code, out = cli(*args)
        assert code == 2 and "Traceback" not in out, out
