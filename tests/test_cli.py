"""The CLI: its option set is pinned, and bad input gets one line on stderr, exit code 2, nothing written."""

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests.conftest import DEMO_RECIPE, EXAMPLES

runner = CliRunner()


def params(command: str) -> set[str]:
    return {p.name for p in get_command(app).commands[command].params}  # type: ignore[attr-defined]


def test_build_dataset_options_are_pinned():
    assert params("build-dataset") == {
        "src",
        "out",
        "recipe",
        "shard_size",
        "batch_size",
        "split",
        "overwrite",
        "address",
        "executor",
        "quiet",
    }


def test_convert_weights_options_are_pinned():
    assert params("convert-weights") == {"src", "dst"}


def run(*args: str):
    return runner.invoke(app, ["build-dataset", *args])


def assert_refused(result, out: Path, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_missing_source(tmp_path):
    out = tmp_path / "out"
    assert_refused(run(str(tmp_path / "nope"), str(out), "--recipe", str(DEMO_RECIPE)), out, "does not exist")


def test_output_is_a_file(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    result = run(str(EXAMPLES), str(out), "--recipe", str(DEMO_RECIPE))
    assert result.exit_code == 2 and "not a folder" in result.stderr and out.read_text() == "x"


@pytest.mark.parametrize(
    ("recipe_text", "fragment"),
    [
        ("[shards]\nsizee = 3\n", "unknown key 'shards.sizee'"),
        ("[nonsense]\nx = 1\n", "unknown recipe section"),
        ('[labelers.depth]\nname = "dpt-smoke"\nwieghts = "x"\n', "unknown setting"),
        ('[labelers.depth]\nname = "mask2former-smoke"\n', "makes 'semseg', not 'depth'"),
        ('[labelers.depth]\nname = "no-such"\n', "unknown labeler"),
        ("not toml = = 1", "not valid TOML"),
        ('[shards]\nsize = "4"\n', "shards.size must be an integer"),
        ('[labelers.depth]\nname = "dpt-hybrid-midas"\nweights = "./no/such/folder"\n', "weights"),
    ],
)
def test_bad_recipes(tmp_path, recipe_text, fragment):
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text)
    out = tmp_path / "out"
    assert_refused(run(str(EXAMPLES), str(out), "--recipe", str(recipe)), out, fragment)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--shard-size", "0"], "shards.size must be >= 1"),
        (["--batch-size", "0"], "runtime.batch_size must be >= 1"),
        (["--executor", "dask"], "--executor"),
        (["--split", "a-b"], "split"),
        (["--split", "../../evil"], "split"),
    ],
)
def test_bad_flags(tmp_path, flags, fragment):
    out = tmp_path / "out"
    assert_refused(run(str(EXAMPLES), str(out), "--recipe", str(DEMO_RECIPE), *flags), out, fragment)


def test_real_labelers_without_weights_stop_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    out = tmp_path / "out"
    assert_refused(run(str(EXAMPLES), str(out)), out, "weights")


def test_foreign_output_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = run(str(EXAMPLES), str(out), "--recipe", str(DEMO_RECIPE), "--overwrite")
    assert result.exit_code == 2 and (out / "thesis.tex").read_text() == "precious"


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mmforge {version('multimae-forge')}"
