"""The transfer-task registry: every task is complete and runs from shard member to main metric, names are
registered once, a failing plugin is named, the config checks names against the registry, and no code of the
trainer outside the registry branches on a task's name.

Parametrised over the registry itself, so a task added later (a plugin's too, when it is installed) is
tested without editing this file; `tests/test_plugin_modality.py` fine-tunes and evaluates the example
plugin's task (`tests/plugin_example`) through the command line.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.format.codecs import CODECS
from pipeline.format.schema import load, validate
from pipeline.synth.rectangles import write_dataset
from trainer.config import ConfigError, FinetuneConfig, ModelConfig, TaskConfig
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.transfer.config import load_finetune_config
from trainer.transfer.finetune import eval_batches, num_classes_of
from trainer.transfer.model import FinetuneObjective, MultiViT, make_mixup, predict
from trainer.transfer.rules import GROUP as ENTRY_POINT_GROUP
from trainer.transfer.tasks import (
    TRANSFER_TASKS,
    register_transfer_task,
    target_problems,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "trainer" / "configs" / "finetune-cls-smoke.toml"
BUILT_IN = ("cls", "semseg", "depth")
# small settings for every head the tasks may build (ConvNeXt, DPT, a plugin's)
TINY_HEADS = {
    "head_embed_dim": 64,
    "preds_per_patch": 16,
    "head_depth": 1,
    "hooks": (0, 0, 1, 1),
    "layer_dims": (16, 32, 64, 64),
    "features": 32,
}


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """rgb, depth (with its json encoding), a class map and one class folder: every built-in task's member."""
    return load_dataset(write_dataset(tmp_path_factory.mktemp("tasks") / "data", [6]))


def tiny_config(name: str) -> FinetuneConfig:
    cfg = load_finetune_config(SMOKE)
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, name=name, **TINY_HEADS))


def test_the_built_in_tasks_are_registered_in_order() -> None:
    assert tuple(TRANSFER_TASKS)[:3] == BUILT_IN


@pytest.mark.parametrize("name", sorted(TRANSFER_TASKS))
def test_every_task_is_complete(name: str) -> None:
    spec = TRANSFER_TASKS[name]
    assert spec.name == name and spec.codec in CODECS and target_problems(spec) == []
    builders = (spec.prepare_target, spec.head, spec.readout, spec.loss, spec.predict, spec.metrics)
    assert all(callable(b) for b in builders) and callable(spec.config_problems)
    assert spec.main_metric and isinstance(spec.higher_is_better, bool)
    assert (spec.class_count is None) == (spec.class_tensor is None) == (not spec.has_classes)
    assert spec.probe is None or callable(spec.probe)
    assert spec.config_problems(tiny_config(name).task) == []


@pytest.mark.parametrize("name", sorted(TRANSFER_TASKS))
def test_every_task_decodes_trains_predicts_and_scores(name: str, info: DatasetInfo) -> None:
    """Shard member -> target -> head -> loss and gradient -> prediction -> metrics with the main one; the
    class count from the manifest and back from the head's class tensor."""
    spec, cfg = TRANSFER_TASKS[name], tiny_config(name)
    if info.manifest is None or CODECS[spec.codec].suffix not in info.manifest.members:
        pytest.skip(f"the test dataset has no {spec.codec} member")
    classes = num_classes_of(info, cfg)
    assert (classes > 0) == spec.has_classes
    if spec.has_classes and classes < 2:  # one class folder: a second class gives the loss a gradient
        cfg, classes = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, num_classes=2)), 2
    batch = next(eval_batches(info, cfg, classes, 4))
    assert set(batch) == {*cfg.model.inputs, spec.target}
    torch.manual_seed(0)
    model = MultiViT(cfg, classes).train()
    loss, per_task = FinetuneObjective(model, make_mixup(cfg, classes))(batch)
    assert set(per_task) == {name} and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.head.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    metrics = spec.metrics(classes, cfg.task)
    metrics.update(predict(model.eval(), batch), batch[spec.target])
    result = metrics.result()
    assert spec.main_metric in result and all(isinstance(v, float) for v in result.values())
    if spec.has_classes:
        assert model.state_dict()[f"output_adapters.{name}.{spec.class_tensor}"].shape[0] == classes


def test_the_main_metric_keeps_its_direction() -> None:
    lower = dataclasses.replace(TRANSFER_TASKS["depth"], name="lower", higher_is_better=False)
    assert TRANSFER_TASKS["depth"].improves(2.0, 1.0) and not TRANSFER_TASKS["depth"].improves(1.0, 2.0)
    assert lower.improves(1.0, 2.0) and not lower.improves(2.0, 1.0) and lower.improves(5.0, None)


def test_registering_refuses_clashes_and_incomplete_entries() -> None:
    depth = TRANSFER_TASKS["depth"]
    before = dict(TRANSFER_TASKS)
    assert register_transfer_task(depth) is depth  # the same entry again (a module imported twice) is a no-op
    with pytest.raises(ValueError, match="'depth' is registered twice"):
        register_transfer_task(dataclasses.replace(depth))
    with pytest.raises(ValueError, match="codec 'no-such-codec' is not registered"):
        register_transfer_task(dataclasses.replace(depth, name="orphan", codec="no-such-codec"))
    with pytest.raises(ValueError, match="target 'semseg' is the modality of codec 'semseg', not 'depth'"):
        register_transfer_task(dataclasses.replace(depth, name="orphan", target="semseg"))
    with pytest.raises(ValueError, match="class_count and class_tensor go together"):
        dataclasses.replace(depth, name="orphan", class_tensor="head.bias")
    with pytest.raises(ValueError, match="main_metric"):
        dataclasses.replace(depth, name="orphan", main_metric="")
    assert dict(TRANSFER_TASKS) == before


def test_a_failing_task_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from labelers import plugins
    from trainer.transfer import tasks

    broken = EntryPoint(name="broken", value="no_such_task_plugin", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken] if group == ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "FAILED", {})
    tasks._load_plugins()  # left out and named; the built-in tasks stay
    with pytest.raises(KeyError, match=r"broken = no_such_task_plugin \(group multimae_forge\.transfer"):
        tasks.transfer_task("edges-from-broken")
    assert "cls" in tasks.TRANSFER_TASKS


def test_the_config_checks_task_names_against_the_registry() -> None:
    with pytest.raises(ConfigError, match=r"task\.name must be one of cls, semseg, depth"):
        load(FinetuneConfig, {"task": {"name": "nope"}})  # a file's table
    validate(FinetuneConfig(task=TaskConfig(name="depth", probe=True)))  # the dense probe
    validate(FinetuneConfig(task=TaskConfig(name="cls", probe=True)))
    with pytest.raises(ConfigError, match="the depth head takes 4 hooks"):
        validate(FinetuneConfig(task=TaskConfig(name="depth", hooks=(0, 1))))
    with pytest.raises(ConfigError, match=r"task\.hooks \[12\] are not blocks of a 12-block encoder"):
        validate(FinetuneConfig(task=TaskConfig(name="depth", hooks=(0, 1, 2, 12))))
    depth_only = ModelConfig(inputs=("depth",), outputs=())
    with pytest.raises(ConfigError, match=r"task\.main_input 'rgb' is not one of model\.inputs"):
        validate(FinetuneConfig(model=depth_only, task=TaskConfig(name="semseg")))
    validate(FinetuneConfig(model=depth_only, task=TaskConfig(name="cls")))  # cls reads every token


# ------------------------------------------------------------------------------------------------ no branches

NAMES = set(BUILT_IN)
REGISTRY = ROOT / "trainer" / "transfer" / "tasks.py"
# the registries' built-in entries declared as data, read by the settings checks without torch (pinned to the
# registries by tests/test_settings_bounds.py::test_the_light_tables_are_the_registries_built_ins)
DECLARED = (ROOT / "trainer" / "transfer" / "rules.py", ROOT / "trainer" / "model" / "builtins.py")


def branches_on_task_names(path: Path) -> list[str]:
    """`x == "cls"` (or !=, is), `x in ("semseg", "depth")`, `case "depth":`, `t.name == "..."` and name-keyed
    tables (a dict literal with two or more task names as keys) in one file."""
    found, shown = [], path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{shown}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            for left, op, right in zip([node.left, *node.comparators[:-1]], node.ops, node.comparators, strict=True):
                if isinstance(op, ast.In | ast.NotIn) and _names_in(right):
                    found.append(f"{where}: membership in task names")
                elif isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot) and (
                    _is_name(left) or _is_name(right) or _name_attr(left, right) or _name_attr(right, left)
                ):
                    found.append(f"{where}: comparison with a task name")
        elif isinstance(node, ast.Dict) and sum(_is_name(k) for k in node.keys if k is not None) >= 2:
            found.append(f"{where}: a table keyed by task names")
        elif isinstance(node, ast.MatchValue) and _is_name(node.value):
            found.append(f"{where}: case on a task name")
    return found


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in NAMES


def _names_in(node: ast.AST) -> bool:
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(_is_name(e) for e in node.elts)


def _name_attr(node: ast.AST, other: ast.AST) -> bool:
    """`<task>.name == "<any literal>"`: a task's name compared with a string."""
    is_task = isinstance(node, ast.Attribute) and node.attr == "name" and "task" in ast.unparse(node.value)
    return is_task and isinstance(other, ast.Constant) and isinstance(other.value, str)


def test_the_finder_sees_each_kind_of_branch(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        'if task == "cls": pass\n'
        'if cfg.task.name != "edges": pass\n'
        'if t in ("semseg", "depth"): pass\n'
        'TABLE = {"cls": 1, "depth": 2}\n'
        'match t:\n    case "semseg": pass\n'
        'if modality == "rgb" and "depth" in outputs: pass\n'  # not a task: modality names and a membership test
    )
    found = sorted(f.split(":", 1)[1] for f in branches_on_task_names(sample))
    assert found == [
        "1: comparison with a task name",
        "2: comparison with a task name",
        "3: membership in task names",
        "4: a table keyed by task names",
        "6: case on a task name",
    ]


def test_no_task_name_is_branched_on_outside_the_registry() -> None:
    files = sorted(p for p in (ROOT / "trainer").rglob("*.py") if p != REGISTRY and p not in DECLARED)
    found = [f for p in files for f in branches_on_task_names(p)]
    assert found == []
