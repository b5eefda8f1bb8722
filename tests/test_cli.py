"""The CLI: its option set is pinned, and bad input gets one line on stderr, exit code 2, nothing written."""

import json
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
        "sets",
    }


def test_convert_weights_options_are_pinned():
    assert params("convert-weights") == {"src", "dst"}


def test_predict_options_are_pinned():
    assert params("predict") == {"checkpoint", "inputs", "out", "device", "batch_size", "quiet"}


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


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["shards.sizee=3"], "unknown key 'shards.sizee'; allowed here: size"),
        (["shard.size=3"], "unknown recipe section(s): shard; allowed: recipe, labelers, source, image"),
        (["image.jpeg_quality=101"], "options: image.jpeg_quality must be <= 100; got 101"),
        (["runtime.precision=fp16x"], "--set runtime.precision: 'fp16x' is not a TOML value"),
        (["shards.size"], "--set takes KEY=VALUE"),
        (['shards.size="4"'], "shards.size must be an integer"),
    ],
)
def test_bad_sets(tmp_path, sets, fragment):
    out = tmp_path / "out"
    args = [a for item in sets for a in ("--set", item)]
    assert_refused(run(str(EXAMPLES), str(out), "--recipe", "demo", *args), out, fragment)


def test_every_bad_set_and_flag_is_listed_at_once(tmp_path):
    out = tmp_path / "out"
    result = run(str(EXAMPLES), str(out), "--recipe", "demo", "--shard-size", "0", "--set", "encoding.png_level=10")
    assert result.exit_code == 2 and not out.exists()
    assert "options: 2 problems" in result.stderr
    assert "shards.size must be >= 1; got 0" in result.stderr and "encoding.png_level must be <= 9" in result.stderr


def test_unknown_recipe_name_lists_the_shipped_ones(tmp_path):
    out = tmp_path / "out"
    result = run(str(EXAMPLES), str(out), "--recipe", "dem")
    assert_refused(result, out, "recipe dem is neither a file nor a shipped name; known names: ade20k, default, demo,")


@pytest.mark.slow
def test_recipe_by_name_and_sets_reach_the_manifest(tmp_path):
    out = tmp_path / "out"
    sets = ["--set", "image.jpeg_quality=80", "--set", 'source.split="val"']
    result = run(str(EXAMPLES), str(out), "--recipe", "demo", "--executor", "local", "--quiet", *sets)
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert recipe["name"] == "demo" and recipe["image"]["jpeg_quality"] == 80 and recipe["source"]["split"] == "val"
    assert sorted(p.name for p in (out / "shards").glob("*.tar"))[0].startswith("val-")


def test_list_names_every_shipped_recipe_and_config():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    recipes, configs = (
        lines.index("recipes (build-dataset --recipe NAME):"),
        lines.index("configs (pretrain, finetune, probe --config NAME):"),
    )
    listed = {line.split()[0] for line in lines[recipes + 1 : configs]}
    assert listed == {p.stem for p in (EXAMPLES.parents[1] / "manifests").glob("*.toml")}
    assert "  demo " in result.output and "Offline demo recipe: tiny random-weight models" in result.output
    only = runner.invoke(app, ["list", "configs"])
    assert only.exit_code == 0 and only.output.startswith("configs (") and "  smoke " in only.output
    assert "recipes (" not in only.output


def test_list_refuses_what_it_does_not_list():
    result = runner.invoke(app, ["list", "labelers"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: list takes recipes or configs, got 'labelers'"


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
