"""A labeler from another package joins the registry through the `multimae_forge.labelers` entry point.

The example below is the whole recipe for a user: a module that registers a spec with a factory, and an
entry point naming that module (`[project.entry-points."multimae_forge.labelers"] mine = "my_pkg.labelers"`
in the user's pyproject.toml). Here the distribution is faked with a dist-info folder on sys.path.
"""

import shutil
import sys
import textwrap

import pytest

from labelers import registry
from pipeline.build.builder import build_dataset
from pipeline.build.recipe import BuildConfig, recipe_from_dict
from tests.conftest import EXAMPLES

PLUGIN = '''
import torch

from labelers import LabelerSpec, register_labeler
from labelers.torch_labeler import TorchLabeler


class LuminanceLabeler(TorchLabeler):
    """Example only: 'inverse depth' = image luminance at the label resolution."""

    def predict(self, pixels):
        return pixels.mean(1)


class _NoWeights(torch.nn.Module):
    pass


SPEC = LabelerSpec(name="luminance-example", modality="depth", model_class="none", weights="",
                   license="CC0", size=64, geometry="short_side", output="inverse_depth", meaningless=True)


@register_labeler(SPEC)
def build(spec, *, device="cpu", precision="fp32"):
    return LuminanceLabeler(spec, _NoWeights(), device=device, precision=precision)
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    (tmp_path / "mmforge_example_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "mmforge_example_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmforge-example-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[multimae_forge.labelers]\nexample = mmforge_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_loaded", False)
    yield
    sys.modules.pop("mmforge_example_plugin", None)


def test_entry_point_labeler_is_registered_and_builds_a_dataset(plugin_on_path, tmp_path):
    assert "luminance-example" in registry.available()
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    recipe = recipe_from_dict(
        {
            "shards": {"size": 2},
            "labelers": {"depth": {"name": "luminance-example"}, "semseg": {"name": "mask2former-smoke"}},
        }
    )
    result = build_dataset(BuildConfig(src=src, out=tmp_path / "out", recipe=recipe, executor="local", quiet=True))
    assert result.ok and result.manifest.modalities["depth"].labeler == "luminance-example@local"
