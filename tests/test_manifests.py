"""Every recipe in manifests/ parses with the registry it names; the paper recipe says what the paper did."""

from pathlib import Path

import pytest

from pipeline.build.recipe import load_recipe

MANIFESTS = sorted((Path(__file__).resolve().parents[1] / "manifests").glob("*.toml"))


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
