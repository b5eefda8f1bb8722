"""The data contract as one typed layer: import rules, documents that round-trip, a format-1 dataset that
still verifies and trains, and one typed loader with every problem listed at once."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pipeline.format import contract
from pipeline.format.contract import DatasetPaths, DocumentError, parse_doc
from pipeline.format.schema import ConfigError, load, setting, to_plain, with_command_line
from pipeline.synth.rectangles import write_dataset
from pipeline.verify.verifier import VerifyConfig, verify_dataset
from trainer.config import smoke_config
from trainer.engine.run import RunOptions
from trainer.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
FORMAT1 = Path(__file__).parent / "data" / "format1-dataset"


def imported_modules(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it (inside functions and TYPE_CHECKING blocks too):
    `from a.b import c` names `a.b.c` when that is a module of the tree, else `a.b`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                child = f"{node.module}.{a.name}"
                found.add(child if module_file(child) else node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


PACKAGES = ("labelers", "pipeline", "trainer")
# Each wing, and what it may never import (the arrows run one way; only pipeline.cli sees everything).
LATER_WINGS = {
    "labelers": ("pipeline", "trainer"),
    "pipeline.format": (
        "pipeline.build",
        "pipeline.verify",
        "pipeline.pictures",
        "pipeline.synth",
        "pipeline.cli",
        "trainer",
    ),
    "pipeline.build": ("pipeline.verify", "pipeline.pictures", "pipeline.synth", "pipeline.cli", "trainer"),
    "pipeline.verify": ("pipeline.build", "pipeline.pictures", "pipeline.synth", "pipeline.cli", "trainer"),
    "pipeline.pictures": ("pipeline.build", "pipeline.synth", "pipeline.cli", "trainer"),
    "pipeline.synth": ("pipeline.verify", "pipeline.pictures", "pipeline.cli", "trainer"),
    "trainer.model": ("trainer.data", "trainer.engine", "trainer.pretrain", "trainer.transfer", "trainer.train"),
    "trainer.data": ("trainer.engine", "trainer.pretrain", "trainer.transfer", "trainer.train"),
    "trainer.engine": ("trainer.pretrain", "trainer.transfer", "trainer.train"),
    "trainer.transfer": ("trainer.pretrain", "trainer.train"),
    "trainer.pretrain": ("trainer.train",),
}


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("wing", sorted(LATER_WINGS))
def test_import_rules(wing: str) -> None:
    """Each wing imports nothing of the wings above it: labelers <- pipeline.format <- build / verify <- pictures,
    synth; trainer.model <- data <- engine <- transfer <- pretrain; the trainer sees the pipeline, never the
    reverse (only `pipeline.cli` sees everything)."""
    broken = {
        module_of(p): sorted(m for m in imported_modules(p) if any(within(m, w) for w in LATER_WINGS[wing]))
        for p in project_files()
        if within(module_of(p), wing)
    }
    assert {k: v for k, v in broken.items() if v} == {}


def test_every_wing_states_its_role() -> None:
    """A folder of a package is a wing with an `__init__.py` whose docstring says what it is for."""
    for package in PACKAGES:
        for folder in (ROOT / package).rglob("*"):
            if folder.is_dir() and any(folder.glob("*.py")):
                init = folder / "__init__.py"
                assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), folder


def test_no_import_cycles() -> None:
    """No module of the project reaches itself through its imports (lazy and TYPE_CHECKING imports count)."""
    graph = {module_of(p): imported_modules(p) for p in project_files()}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of a small graph, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


DOCS = {
    contract.PlanHeader: "plan/plan.json",
    contract.PlanEntries: "plan/train-000000.json",
    contract.ShardStats: "shards/train-000000.stats.json",
    contract.Index: "index.json",
    contract.WidsIndex: "wids-index.json",
    contract.Manifest: "manifest.json",
    contract.Marker: "mmforge.json",
}


@pytest.mark.parametrize("cls", list(DOCS), ids=lambda c: c.__name__)
def test_every_document_round_trips(cls: type, tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", [2, 1])
    data = (root / DOCS[cls]).read_bytes()
    doc = parse_doc(cls, data, DOCS[cls])
    assert to_plain(doc) == json.loads(data)  # nothing dropped, nothing added


def test_documents_refuse_unknown_formats_and_fields(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", [2])
    index = json.loads((root / "index.json").read_text())
    with pytest.raises(DocumentError, match="format 3 is not one this version reads"):
        parse_doc(contract.Index, json.dumps({**index, "format": 3}).encode(), "index.json")
    with pytest.raises(DocumentError, match="unknown key 'extra'"):
        parse_doc(contract.Index, json.dumps({**index, "extra": 1}).encode(), "index.json")


def test_a_format_1_dataset_verifies(tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(FORMAT1, out)
    assert json.loads((out / "manifest.json").read_text())["format"] == 1 and not (out / "mmforge.json").exists()
    report = verify_dataset(VerifyConfig(out=out, deep=True, quiet=True))
    assert report.ok, report.defects
    assert report.samples == 6 and len(report.failures) == 1


def test_a_format_1_dataset_trains(tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(FORMAT1, out)
    cfg = smoke_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, progress=False))
    summary = pretrain(cfg, RunOptions(data=out, out=tmp_path / "run", device="cpu"))
    assert summary.steps == 2 and all(loss == loss for loss in summary.losses)


def test_the_folder_paths_are_spelled_once(tmp_path: Path) -> None:
    paths = DatasetPaths(tmp_path)
    assert paths.shard_tar("train-000003") == tmp_path / DatasetPaths.url("train-000003")
    assert {p.name for p in paths.named_by(("train-000000",))} == {
        "mmforge.json",
        ".mmforge.lock",
        "plan.json",
        "manifest.json",
        "index.json",
        "wids-index.json",
        "train-000000.json",
        "train-000000.tar",
        "train-000000.stats.json",
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Part:
    n: int = setting(1, ge=1)
    p: float = setting(0.5, ge=0, le=1)
    mode: str = setting("a", choices=("a", "b"))
    pair: tuple[float, float] = (0.1, 0.9)

    def problems(self) -> list[str]:
        return [] if self.pair[0] <= self.pair[1] else ["pair must be ordered"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Whole:
    part: _Part = dataclasses.field(default_factory=_Part)
    name: str = "x"


def test_one_loader_lists_every_problem_at_once() -> None:
    assert load(_Whole, {"part": {"n": 3}}).part.n == 3
    with pytest.raises(ConfigError) as err:
        load(_Whole, {"part": {"n": 0, "p": 7, "mode": "c", "pair": [0.9, 0.1]}, "name": 5, "nope": 1})
    assert set(err.value.problems) == {
        "unknown key 'nope'; allowed here: name, part",
        "part.n must be >= 1; got 0",
        "part.p must be <= 1; got 7.0",
        "part.mode must be one of a, b; got 'c'",
        "part: pair must be ordered",
        "name must be a string, got 5",
    }
    with pytest.raises(ConfigError, match=r"part.n must be an integer, got true"):
        load(_Whole, {"part": {"n": True}})


def test_the_command_line_changes_a_table_that_the_loader_then_checks() -> None:
    table = {"part": {"n": 2, "pair": [0.1, 0.9]}}
    sets = ["part.p=0.25", 'name="y"', "part.pair=[0.2, 0.3]", "part={mode = 'b'}"]
    changed, problems = with_command_line(table, {"part.n": 5, "name": None}, sets)
    assert problems == [] and table == {"part": {"n": 2, "pair": [0.1, 0.9]}}  # the given table is not changed
    whole = load(_Whole, changed)
    assert (whole.part.n, whole.part.p, whole.part.mode, whole.part.pair, whole.name) == (5, 0.25, "b", (0.2, 0.3), "y")
    changed, problems = with_command_line(table, {}, ["part.n=three", "part", "part.pair.x=1", "name.x=1"])
    assert problems == [
        "--set part.n: 'three' is not a TOML value (a number, true or false, \"text\" in quotes, [a, list])",
        "--set takes KEY=VALUE with a dotted KEY (e.g. optim.base_lr=3e-4), got 'part'",
        "part.pair is a list, not a table: part.pair.x cannot be set",
    ]
    assert changed["name"] == {"x": 1}  # not a table in the file: the loader says what is wrong with it
    with pytest.raises(ConfigError, match="name must be a string, got a table"):
        load(_Whole, changed)
