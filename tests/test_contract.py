"""The data contract as one typed layer: import rules, documents that round-trip, a format-1 dataset that
still verifies and trains, and one typed loader with every problem listed at once."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pipeline import contract
from pipeline.contract import DatasetPaths, DocumentError, parse_doc
from pipeline.schema import ConfigError, load, setting, to_plain
from pipeline.verify import VerifyConfig, verify_dataset
from trainer.config import smoke_config
from trainer.run import RunOptions
from trainer.synthetic import write_dataset
from trainer.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
FORMAT1 = Path(__file__).parent / "data" / "format1-dataset"


def imports_of(path: Path) -> set[str]:
    """Top-level package names a module imports, anywhere in it (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden", "allowed_in"),
    [("labelers", {"pipeline", "trainer"}, set()), ("pipeline", {"trainer"}, {"cli.py"})],
)
def test_import_rules(package: str, forbidden: set[str], allowed_in: set[str]) -> None:
    """labelers/ imports nothing of pipeline/ or trainer/; pipeline/ nothing of trainer/ but in its CLI."""
    broken = {
        p.relative_to(ROOT).as_posix(): sorted(imports_of(p) & forbidden)
        for p in sorted((ROOT / package).rglob("*.py"))
        if p.name not in allowed_in and imports_of(p) & forbidden
    }
    assert broken == {}


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
