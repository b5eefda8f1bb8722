"""A rerun repairs what happened to a dataset after its build; the executor is chosen by size; Ctrl-C on Ray.

- A rerun checks each kept shard against its stats marker (size, sha256) and rebuilds a damaged or lost one,
  naming it; `verify` says which command repairs what it found (the command manifest.json records).
- `--executor auto` builds a small dataset in-process and says why; Ctrl-C on a Ray build is one line, exit 130,
  and the rerun resumes.
"""

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.build.builder import LOCAL_MAX_IMAGES, Executor, build_dataset, choose_executor, summary
from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides
from pipeline.cli.app import app
from pipeline.verify.verifier import VerifyConfig, verify_dataset
from pipeline.verify.verifier import summary as verify_summary
from tests.conftest import DEMO_RECIPE, EXAMPLES, ROOT

pytestmark = pytest.mark.slow

COMMAND = "mmforge build-dataset SRC OUT --recipe demo --shard-size 2"


def photos(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def build(src: Path, out: Path, executor: str = "local", **kw):
    recipe = with_overrides(load_recipe(DEMO_RECIPE), shard_size=2)
    cfg = BuildConfig(src=src, out=out, recipe=recipe, executor=executor, quiet=True, command=COMMAND, **kw)
    return build_dataset(cfg)


def flip_byte(path: Path, at: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    src, out = photos(tmp_path / "src"), tmp_path / "out"
    assert build(src, out).ok
    return src, out, {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_a_rerun_rebuilds_a_shard_damaged_after_its_build(built, capsys):
    src, out, original = built
    flip_byte(out / "shards" / "train-000001.tar")
    damaged = verify_dataset(VerifyConfig(out=out, workers=1, quiet=True))
    assert not damaged.ok
    assert damaged.remedy == [f"rerun `{COMMAND}` (the same command) to rebuild the 1 damaged shards (train-000001)"]
    assert verify_summary(damaged).splitlines()[-1].startswith(f"repair: rerun `{COMMAND}` (the same command)")
    capsys.readouterr()

    again = build(src, out)
    err = capsys.readouterr().err
    assert "checking 3 kept shards against their stats (size, sha256)" in err
    assert "repairing shard train-000001: the tar's sha256 differs from its stats" in err
    assert again.ok and again.repaired == ("train-000001",) and again.checked == 3 and again.images_this_run == 2
    assert "3 kept shards checked against their stats, 1 repaired: train-000001" in summary(again)
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))} == original  # same bytes
    assert verify_dataset(VerifyConfig(out=out, workers=1, quiet=True)).ok


def test_a_lost_or_truncated_shard_is_repaired_and_an_intact_rerun_repairs_nothing(built, capsys):
    src, out, original = built
    (out / "shards" / "train-000000.tar").unlink()
    tar = out / "shards" / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    report = verify_dataset(VerifyConfig(out=out, workers=1, quiet=True))
    assert "to rebuild the 2 damaged shards (train-000000, train-000002)" in report.remedy[0]
    capsys.readouterr()
    again = build(src, out)
    err = capsys.readouterr().err
    assert "repairing shard train-000000: the tar is missing" in err
    assert "repairing shard train-000002: the tar is" in err and "bytes, its stats say" in err
    assert again.ok and again.repaired == ("train-000000", "train-000002")
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))} == original
    intact = build(src, out)
    assert intact.repaired == () and intact.images_this_run == 0 and "0 repaired" in summary(intact)
    assert "repairing" not in capsys.readouterr().err


def test_verify_without_a_recorded_command_names_the_source(built):
    src, out, _ = built
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text().replace(f'"command": "{COMMAND}"', '"command": ""'))
    flip_byte(out / "shards" / "train-000000.tar")
    remedy = verify_dataset(VerifyConfig(out=out, workers=1, quiet=True)).remedy
    assert len(remedy) == 1 and f"`mmforge build-dataset {src.resolve()} {out}`" in remedy[0]
    assert "does not record the command" in remedy[0] and "rebuild the 1 damaged shards" in remedy[0]


def test_defects_a_rerun_cannot_repair_say_overwrite(built):
    _, out, _ = built
    (out / "shards" / "stray.txt").write_text("not ours")
    plan = out / "plan" / "train-000001.json"
    plan.write_text(plan.read_text().replace(".jpg", ".JPG", 1))
    remedy = verify_dataset(VerifyConfig(out=out, workers=1, quiet=True)).remedy
    assert any(line.startswith("move away the 1 files") for line in remedy)
    assert any(f"`{COMMAND} --overwrite`" in line for line in remedy)


def test_the_cli_records_the_command_and_verify_quotes_it(tmp_path):
    src, out = photos(tmp_path / "src", 4), tmp_path / "out"
    args = ["build-dataset", str(src), str(out), "--recipe", "demo", "--shard-size", "2", "--quiet"]
    built = CliRunner().invoke(app, args)
    assert built.exit_code == 0, built.output
    assert "executor: local (auto: 4 images to build, under" in built.stdout
    expected = f"mmforge build-dataset {src.resolve()} {out.resolve()} --recipe demo --shard-size 2"
    assert f'"command": "{expected}"' in (out / "manifest.json").read_text()
    flip_byte(out / "shards" / "train-000000.tar")
    checked = CliRunner().invoke(app, ["verify", str(out), "--quiet"])
    assert checked.exit_code == 1
    last = checked.stdout.strip().splitlines()[-1]
    assert last == f"repair: rerun `{expected}` (the same command) to rebuild the 1 damaged shards (train-000000)"
    conflict = CliRunner().invoke(app, [*args, "--executor", "local", "--address", "auto"])
    assert conflict.exit_code == 2 and "--address needs Ray" in conflict.stderr


def test_the_executor_is_chosen_by_size_unless_named():
    recipe = load_recipe(DEMO_RECIPE)

    def chosen(n: int, **kw: str) -> Executor:
        return choose_executor(BuildConfig(src=EXAMPLES, out=ROOT / "x", recipe=recipe, **kw), n)

    assert chosen(LOCAL_MAX_IMAGES - 1).name == "local" and "auto" in chosen(21).reason
    assert chosen(LOCAL_MAX_IMAGES).name == "ray"
    assert chosen(5, executor="ray") == Executor("ray", "--executor ray")
    assert chosen(5, address="auto") == Executor("ray", "--address auto")
    assert chosen(10**6, executor="local").name == "local"


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch):
    def interrupted(cfg: BuildConfig) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.build.builder.build_dataset", interrupted)
    src = photos(tmp_path / "src", 1)
    result = CliRunner().invoke(app, ["build-dataset", str(src), str(tmp_path / "out"), "--recipe", "demo"])
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == "interrupted: rerun the same command to resume"
    assert "Traceback" not in result.output


def _sigint_default() -> None:
    """In the child: Ctrl-C as at a terminal, even when the tests run as a background job (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.ray
@pytest.mark.timeout(900)  # a Ray cluster of its own: ~40 s on an idle 2-core machine, minutes on a loaded one
def test_ctrl_c_on_a_ray_build_is_one_line_and_the_rerun_resumes(request, tmp_path):
    """The build runs in its own process (and Ray) and gets SIGINT as from a terminal; the rerun joins the tests'
    Ray session (started only after, so the two never share the CPUs)."""
    src, out, log = photos(tmp_path / "src", 11), tmp_path / "out", tmp_path / "stderr.txt"
    for copy in range(1, 6):  # 66 images in 33 shards: the build is still running when the first shard is done
        for p in sorted(src.glob("*.jpg"))[:11]:
            (src / f"{copy}-{p.name}").write_bytes(p.read_bytes())
    cmd = [sys.executable, "-c", "from pipeline.cli.app import main; main()", "build-dataset", str(src), str(out)]
    cmd += ["--recipe", "demo", "--shard-size", "2", "--executor", "ray", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True, preexec_fn=_sigint_default
        )
        started = time.monotonic()
        while not glob.glob(str(out / "shards" / "*.stats.json")) and time.monotonic() - started < 600:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        proc.wait(timeout=120)
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert stderr.rstrip().splitlines()[-1] == "interrupted: rerun the same command to resume"
    assert "Error" not in stderr and "\x1b[" not in stderr and "Traceback" not in stderr, stderr
    kept = len(glob.glob(str(out / "shards" / "*.stats.json")))
    assert 1 <= kept < 33
    request.getfixturevalue("ray_session")
    recipe = with_overrides(load_recipe(DEMO_RECIPE), shard_size=2)
    again = build_dataset(BuildConfig(src=src, out=out, recipe=recipe, executor="ray", quiet=True))
    assert again.ok and again.checked == kept and again.repaired == ()
    assert again.images_this_run == 66 - 2 * kept
    assert verify_dataset(VerifyConfig(out=out, workers=1, quiet=True)).ok
