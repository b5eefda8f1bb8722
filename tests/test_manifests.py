"""Every recipe in manifests/ parses with the registry it names; the paper recipe says what the paper did."""

import tomllib
from pathlib import Path

import pytest

from pipeline.build.recipe import RECIPES, load_recipe
from pipeline.format.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "manifests").glob("*.toml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.labelers and {s.modality for s in recipe.labelers} <= {"depth", "semseg", "normal"}
    assert recipe.name == path.stem


def test_paper_recipe_facts():
    recipe = load_recipe(Path(MANIFESTS[0]).with_name("imagenet1k-multimae.toml"))
    depth, semseg = recipe.labelers
    assert depth.name == "omnidata-dpt-hybrid" and depth.output == "depth" and depth.geometry == "multiple_of_32"
    assert depth.mean == depth.std == (0.5, 0.5, 0.5)
    assert semseg.num_classes == 133 and semseg.output == "classes"
    assert recipe.shards.size == 1000 and recipe.image.max_side == 0
    assert "NC" in depth.license and "NC" in semseg.license


def test_default_toml_is_the_built_in_default():
    assert load_recipe(Path(MANIFESTS[0]).with_name("default.toml")).fingerprint() == load_recipe(None).fingerprint()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_recipe_is_named_by_its_file_name(path):
    assert load_recipe(path.stem).fingerprint() == load_recipe(path).fingerprint()


def test_the_shipped_recipes_are_the_manifests_folder():
    """In a checkout `pipeline/build/recipes` links to manifests/; a wheel holds the files there (package data)."""
    assert RECIPES.resolve() == (ROOT / "manifests").resolve()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "recipes/*.toml" in package_data["pipeline.build"]


def test_a_file_wins_over_a_name_and_a_name_needs_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text('[recipe]\nname = "mine"\n[labelers.depth]\nname = "dpt-smoke"\n')
    assert load_recipe("demo").name == "mine"
    with pytest.raises(
        ConfigError, match=r"recipe demo.toml is neither a file nor a shipped name; known names: ade20k"
    ):
        load_recipe("demo.toml")


def test_overrides_and_sets_are_checked_as_the_file():
    recipe = load_recipe(
        "demo", {"shards.size": 7, "source.split": None}, ["image.max_side=64", "labelers.depth.size=96"]
    )
    assert (recipe.shards.size, recipe.source.split, recipe.image.max_side) == (7, "train", 64)
    assert [s.size for s in recipe.labelers if s.modality == "depth"] == [96]
    assert load_recipe(None, sets=["labelers.depth.size=96"]).labelers[0].name == "dpt-hybrid-midas"  # the default
    with pytest.raises(ConfigError) as err:
        load_recipe("demo", {"shards.size": 0}, ["image.jpeg_quality=0", "image.nope=1"])
    assert set(err.value.problems) == {
        "shards.size must be >= 1; got 0",
        "unknown key 'image.nope'; allowed here: jpeg_quality, max_file_bytes, max_pixels, max_side",
        "image.jpeg_quality must be >= 1; got 0",
    }
