"""Every numeric setting of a run (trainer configs) and of a build (recipes, `files` labelers, preview) has a lower
and an upper bound; a value just outside one is refused and one just inside is not; the cross-field rules a run
needs are checked; the shipped configs, recipes and labelers stay inside them; and bad values reach the user as
one error, all listed at once, exit 2, before anything is written or any model is built."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from labelers import available, resolve_spec
from pipeline.build.label_files import FileLabels
from pipeline.build.recipe import (
    EncodingConfig,
    ImageConfig,
    RuntimeConfig,
    ShardConfig,
    SourceConfig,
    load_recipe,
)
from pipeline.cli.app import app
from pipeline.format.schema import ConfigError, load, problems_of
from pipeline.format.stores import location
from pipeline.pictures.preview import PreviewConfig
from pipeline.synth.rectangles import write_dataset
from pipeline.synth.scenes import MAX_SCENES, MAX_WORKERS, SceneConfig, ScenesError
from tests.conftest import DEMO_RECIPE, EXAMPLES
from trainer.config import (
    CONFIGS,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TaskConfig,
    TrainConfig,
    load_run_config,
)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

SETTINGS = (
    ModelConfig,
    DataConfig,
    OptimConfig,
    TrainConfig,
    TaskConfig,
    SourceConfig,
    ImageConfig,
    ShardConfig,
    EncodingConfig,
    RuntimeConfig,
    FileLabels,
    PreviewConfig,
)
REQUIRED: dict[type, dict[str, Any]] = {FileLabels: {"root": "labels"}}


def numeric_fields(cls: type) -> list[tuple[str, type, dict[str, Any]]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, hints[f.name], f.metadata.get("rules", {}))
        for f in dataclasses.fields(cls)
        if hints[f.name] in (int, float)
    ]


def bounds() -> list[Any]:
    """(class, field, rule, bound, type) for every numeric bound of every settings class."""
    found = []
    for cls in SETTINGS:
        for name, kind, rules in numeric_fields(cls):
            for rule in ("ge", "gt", "le", "lt"):
                if rule in rules:
                    found.append(pytest.param(cls, name, rule, rules[rule], kind, id=f"{cls.__name__}.{name}-{rule}"))
    return found


def outside(rule: str, bound: float, kind: type) -> float:
    if kind is int:
        return {"ge": bound - 1, "gt": bound, "le": bound + 1, "lt": bound}[rule]
    up, down = math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)
    return {"ge": down, "gt": bound, "le": up, "lt": bound}[rule]


def inside(rule: str, bound: float, kind: type) -> float:
    if kind is int:
        return {"ge": bound, "gt": bound + 1, "le": bound, "lt": bound - 1}[rule]
    return {"ge": bound, "gt": math.nextafter(bound, math.inf), "le": bound, "lt": math.nextafter(bound, -math.inf)}[
        rule
    ]


def problems(cls: type, name: str, value: Any) -> list[str]:
    """The problems of `cls` with `name` = `value`: loaded from a table as a file is (a preview's config is built
    by its command, then checked)."""
    if cls is PreviewConfig:
        return problems_of(PreviewConfig(data=location("."), **{name: value}))
    try:
        load(cls, {**REQUIRED.get(cls, {}), name: value})
    except ConfigError as err:
        return err.problems
    return []


# ------------------------------------------------------------------------------------------- every bound


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_lower_and_an_upper_bound(cls: type) -> None:
    unbounded = [
        name
        for name, _, rules in numeric_fields(cls)
        if "choices" not in rules and not ({"ge", "gt"} & set(rules) and {"le", "lt"} & set(rules))
    ]
    assert not unbounded, f"{cls.__name__}: no lower or no upper bound: {unbounded}"


@pytest.mark.parametrize(("cls", "name", "rule", "bound", "kind"), bounds())
def test_just_outside_a_bound_is_refused_and_just_inside_is_not(
    cls: type, name: str, rule: str, bound: float, kind: type
) -> None:
    text = bound if isinstance(bound, int) else f"{bound:g}"
    message = f"{name} must be {dict(ge='>=', gt='>', le='<=', lt='<')[rule]} {text}; got "
    bad = outside(rule, bound, kind)
    assert any(p.startswith(message) for p in problems(cls, name, bad)), problems(cls, name, bad)
    good = inside(rule, bound, kind)
    assert not [p for p in problems(cls, name, good) if re.match(rf"{name} must be [<>]=? \S+; got ", p)]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("model.image_size", 1_000_000),  # the issue's: position embeddings of billions of tokens
        ("model.image_size", 4097),
        ("model.patch_size", 65),
        ("model.dim", 8196),
        ("model.depth", 129),
        ("data.shuffle_buffer", 100_001),
        ("data.batch_size", 65_537),
        ("optim.base_lr", 11.0),
        ("train.epochs", 100_001),
    ],
)
def test_the_upper_bounds_of_a_run(name: str, value: int | float) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be <= "):
        load_run_config("pretrain", "smoke", sets=[f"{name}={value}"])


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["model.patch_size=0"], "model.patch_size must be >= 4; got 0"),  # was a ZeroDivisionError
        (["model.heads=0"], "model.heads must be >= 1; got 0"),
        (["model.decoder_heads=0"], "model.decoder_heads must be >= 1; got 0"),
        (["model.patch_size=0", "model.heads=0", "model.image_size=-1"], "3 problems"),
    ],
)
def test_a_zero_divisor_is_a_range_problem_never_a_crash(sets: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_run_config("pretrain", "smoke", sets=sets)


# ------------------------------------------------------------------------------------------- cross-field


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["model.image_size=72"], "image_size 72 must be a multiple of patch_size 16"),
        (["model.image_size=2048", "model.patch_size=4"], "image_size / patch_size must be <= 256"),
        (["model.image_size=60", "model.patch_size=6"], "patch_size 6 must be a multiple of 4 (the semseg"),
        (["model.dim=66"], "dim 66 must be a multiple of heads 4 and of 4"),
        (["model.decoder_dim=36", "model.decoder_heads=8"], "decoder_dim 36 must be a multiple of decoder_heads"),
        (["model.num_visible=48"], "num_visible 48 must be < the 48 tokens of the inputs"),
        (["model.mlp_ratio=0.01"], "mlp_ratio 0.01 leaves an MLP without units"),
        (['model.inputs=["rgb", "rgb"]'], "inputs names 'rgb' twice"),
        (['model.outputs=["rgb", "depth", "rgb"]'], "outputs names 'rgb' twice"),
        (["optim.betas=[0.9, 1.0]"], "betas must be in [0, 1)"),
        (["data.crop_scale=[0.5, 0.2]"], "crop_scale must be 0 < low <= high <= 1"),
        (["data.crop_ratio=[0.75, 20.0]"], "crop_ratio must be 0.1 <= low <= high <= 10"),
        (["train.epochs=0", "train.steps=0"], "epochs or steps must be > 0"),
    ],
)
def test_cross_field_rules_of_a_pretraining_run(sets: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config("pretrain", "smoke", sets=sets)
    assert any(fragment in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("config", "sets", "fragment"),
    [
        ("finetune-semseg-smoke", ["task.preds_per_patch=15"], "preds_per_patch 15 must be a square"),
        ("finetune-semseg-smoke", ["task.head_embed_dim=200"], "dividing head_embed_dim 200"),
        ("finetune-depth-smoke", ["task.layer_dims=[16, 0, 64, 64]"], "layer_dims must be 1..8192"),
        ("finetune-depth-smoke", ["task.hooks=[0, 0, 1, 2]"], "task.hooks [2] are not blocks of a 2-block"),
        ("finetune-depth-smoke", ["task.main_input='depth'"], "task.main_input 'depth' is not one of model.inputs"),
    ],
)
def test_cross_field_rules_of_a_fine_tuning_run(config: str, sets: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config("finetune", config, sets=sets)
    assert any(fragment in p for p in err.value.problems), err.value.problems


def test_range_and_cross_field_problems_of_every_table_are_listed_at_once() -> None:
    sets = ["model.depth=1000", "model.image_size=72", "data.workers=999", "optim.weight_decay=-1", "train.keep_last=0"]
    with pytest.raises(ConfigError) as err:
        load_run_config("pretrain", "smoke", sets=sets)
    assert str(err.value).startswith("options: 5 problems")
    assert "model: image_size 72 must be a multiple of patch_size 16" in err.value.problems


@pytest.mark.parametrize(
    ("name", "bound", "fragment"),
    [
        ("n", MAX_SCENES, f"n must be at least 1 and at most {MAX_SCENES:,}"),
        ("workers", MAX_WORKERS, f"workers must be at least 1 and at most {MAX_WORKERS}"),
    ],
)
def test_scene_settings_are_bounded(name: str, bound: int, fragment: str) -> None:
    base = SceneConfig(n=1, seed=0, workers=1)
    at_bound: dict[str, Any] = {name: bound}
    assert getattr(dataclasses.replace(base, **at_bound), name) == bound
    with pytest.raises(ScenesError, match=fragment):
        dataclasses.replace(base, **{**at_bound, name: bound + 1})


# ------------------------------------------------------------------------------------------- shipped files


def _kind(path: Path) -> str:
    return "finetune" if "task" in tomllib.loads(path.read_text()) else "pretrain"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_inside_the_bounds(path: Path) -> None:
    cfg = load_run_config(_kind(path), path)
    assert isinstance(cfg, FinetuneConfig if _kind(path) == "finetune" else PretrainConfig)
    assert problems_of(cfg) == []


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_is_inside_the_bounds(path: Path) -> None:
    assert problems_of(load_recipe(path)) == []


@pytest.mark.parametrize("name", available())
def test_every_registered_labeler_spec_resolves(name: str) -> None:
    assert resolve_spec(name).name == name


def test_the_defaults_are_inside_the_bounds() -> None:
    assert problems_of(PretrainConfig()) == []
    assert problems_of(load_recipe(None)) == []


# ------------------------------------------------------------------------------------------- the commands


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_pretrain_lists_every_bad_set_exits_2_and_builds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.train

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started: its config was not checked first")

    monkeypatch.setattr(trainer.train, "pretrain", never)
    out, data = tmp_path / "run", write_dataset(tmp_path / "data", [2])  # a real dataset: the paths pass
    sets = ["model.image_size=1000000", "model.patch_size=0", "data.shuffle_buffer=10000000", "optim.base_lr=1e3"]
    args = [a for item in sets for a in ("--set", item)]
    result = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(out), "--config", "smoke", *args])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert lines[0] == "error: options: 4 problems" and len(lines) == 5, result.output
    for fragment in ("model.image_size must be <= 4096", "model.patch_size must be >= 4", "data.shuffle_buffer"):
        assert any(fragment in line for line in lines), result.output
    assert not out.exists()


def test_build_dataset_lists_every_bad_recipe_value_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    text = DEMO_RECIPE.read_text().replace("max_side = 0\n", "max_side = 0\nmax_file_bytes = 1099511627776\n")
    text = text.replace("[shards]\nsize = 4\n", "[shards]\nsize = 0\n").replace(
        'precision = "fp32"', 'precision = "fp32"\nstall_minutes = 1e9'
    )
    recipe.write_text(text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build-dataset", str(EXAMPLES), str(out), "--recipe", str(recipe), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "3 problems" in result.stderr, result.stderr
    for fragment in (
        "image.max_file_bytes must be <= 4294967296",
        "shards.size must be >= 1; got 0",
        "runtime.stall_minutes must be <= 10080",
    ):
        assert fragment in result.stderr, result.stderr
    assert not out.exists()


def test_build_dataset_sets_are_checked_against_the_bounds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sets = ["image.max_pixels=2147483648", "runtime.gpus_per_actor=100", "runtime.cpus_per_actor=-1"]
    args = [a for item in sets for a in ("--set", item)]
    result = runner.invoke(app, ["build-dataset", str(EXAMPLES), str(out), "--recipe", "demo", "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert "options: 3 problems" in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("key", "good", "bad", "fragment"),
    [
        ("labelers.depth.size", 8192, 8193, "size must be an integer 32..8192"),
        ("labelers.semseg.max_side", 8192, 8193, "max_side must be an integer 1..8192"),
        ("labelers.semseg.min_side", 1, 0, "min_side must be an integer 1..8192"),
    ],
)
def test_a_labelers_sides_are_bounded(key: str, good: int, bad: int, fragment: str) -> None:
    load_recipe("demo", sets=[f"{key}={good}"])
    with pytest.raises(ConfigError, match=fragment):
        load_recipe("demo", sets=[f"{key}={bad}"])


# ------------------------------------------------------------------------- checked without the registries


def test_the_light_tables_are_the_registries_built_ins() -> None:
    """Settings are checked against `trainer.model.builtins` and `trainer.transfer.rules` (no torch); these
    must say what the registries' built-in entries say."""
    from trainer.config import task_rules
    from trainer.model import builtins
    from trainer.model.modalities import _MODALITIES, _TASKS
    from trainer.transfer import rules
    from trainer.transfer.protocols import EVAL_PROTOCOLS
    from trainer.transfer.tasks import _BUILT_IN

    assert {m.name: m.stride for m in _MODALITIES} == builtins.STRIDES
    assert {t.name: t.source for t in _TASKS} == builtins.SOURCES
    assert tuple(EVAL_PROTOCOLS) == rules.EVAL_PROTOCOL_NAMES
    registry = task_rules()  # the registry is imported now: read from it
    assert {t.name for t in _BUILT_IN} == set(rules.BUILT_IN)
    assert {name: registry[name] for name in rules.BUILT_IN} == rules.BUILT_IN


def fresh_interpreter(code: str) -> str:
    """What `code` prints in a new Python process (which has imported nothing yet); it must exit 0."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_settings_are_checked_without_torch() -> None:
    """Every shipped config loads, and a bad one is refused, in a fresh interpreter that never imports torch
    (no plugin is installed here: the built-in tables are read)."""
    code = (
        "import sys\n"
        "from trainer.config import CONFIGS, ConfigError, load_run_config\n"
        "for path in sorted(CONFIGS.glob('*.toml')):\n"
        "    kind = 'pretrain' if 'finetune' not in path.name and 'probe' not in path.name else 'finetune'\n"
        "    load_run_config('probe' if 'probe' in path.name else kind, path)\n"
        "for kind, name, key in (('pretrain', None, 'model.patch_size'),\n"
        "                        ('finetune', 'scenes-finetune-semseg', 'task.preds_per_patch')):\n"
        "    try:\n"
        "        load_run_config(kind, name, {key: 3})\n"
        "    except ConfigError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(kind + ' accepted a bad ' + key)\n"
        "print('torch' in sys.modules)\n"
    )
    assert fresh_interpreter(code).strip() == "False"


def test_the_built_in_labeler_specs_are_the_registered_ones() -> None:
    """A recipe is checked against `labelers.builtin.SPECS`; each labeler module registers exactly that spec."""
    from labelers import builtin, registry

    registry._load_all()
    assert {name: registry._REGISTRY[name][0] for name in builtin.SPECS} == builtin.SPECS
    for name, spec in builtin.SPECS.items():
        assert registry._REGISTRY[name][0] is spec, name


def test_recipes_are_checked_without_torch() -> None:
    """Every shipped recipe loads, and bad values are all listed, in a fresh interpreter that never imports torch
    (no labeler plugin is installed here)."""
    code = (
        "import sys\n"
        "from pipeline.build.recipe import RECIPES, ConfigError, load_recipe\n"
        "for path in sorted(RECIPES.glob('*.toml')):\n"
        "    load_recipe(path)\n"
        "try:\n"
        "    load_recipe('demo', sets=['shards.size=0', 'labelers.depth.size=5', 'labelers.semseg.name=\"nope\"'])\n"
        "except ConfigError as err:\n"
        "    print(len(err.problems))\n"
        "print('torch' in sys.modules)\n"
    )
    assert fresh_interpreter(code).split() == ["3", "False"]
