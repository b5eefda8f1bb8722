"""`mmforge verify`: prove a built dataset is complete, intact and true to the data contract.

One entry point, `verify_dataset(VerifyConfig) -> VerifyReport`. Fast mode reads every shard once (sha256,
bytes, strict tar walk, member names, sample grouping) and cross-checks plan/, the stats markers, index.json,
the wids index and manifest.json. Deep mode also decodes every member with the codec table and checks pixel
formats, geometry, class ids and the sample json, in several processes.

Defect kinds (stable identifiers, `Defect.kind`):
- files: missing_file, bad_file, missing_shard, missing_marker, extra_shard, stray_temp_file, unexpected_file
- records: sha256_mismatch, bytes_mismatch, count_mismatch, not_in_index, index_mismatch, totals_mismatch,
  failures_mismatch, shard_failed, check_failed
- tar: truncated, bad_header, trailing_data, bad_member_type
- samples: bad_member_name, missing_member, extra_member, duplicate_member, members_not_adjacent, duplicate_key
- deep: undecodable, wrong_pixel_format, size_mismatch, class_id_out_of_range, bad_json, bad_class
Per-image failures the build recorded (bad source images) are not defects: they are accounted for, and listed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.codecs import CODECS, IGNORE_ID
from pipeline.fs import is_temp
from pipeline.verify_sample import Defect, MapSpec
from pipeline.verify_shard import ShardExpect, ShardResult, check_shard

__all__ = ["Defect", "NotADatasetError", "VerifyConfig", "VerifyReport", "summary", "verify_dataset"]

_POOL_MIN_SAMPLES = 500  # below this, auto workers verify in-process (a process pool costs ~0.5-1 s to start)
_DATASET_FILES = ("plan/plan.json", "manifest.json", "index.json", "wids-index.json")


class NotADatasetError(ValueError):
    """OUT is missing or holds no dataset at all (bad usage, exit code 2), as opposed to a defective one."""


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    out: Path
    deep: bool = False
    workers: int = 0  # 0: auto (one process per CPU and shard; none when small); 1: in this process
    json_path: Path | None = None  # also write the complete report here
    quiet: bool = False  # no progress bar


@dataclass(kw_only=True)
class VerifyReport:
    out: str
    deep: bool
    shards_expected: int = 0
    shards_checked: int = 0
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    defects: list[Defect] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # recorded bad inputs (not defects)
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.defects

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.update(ok=self.ok, samples_per_s=round(self.samples_per_s, 2), mb_per_s=round(self.mb_per_s, 2))
        return doc


@dataclass
class _Dataset:
    """The dataset-level files as read (None where missing or unreadable)."""

    out: Path
    docs: dict[str, Any]
    defects: list[Defect]

    def doc(self, name: str) -> dict[str, Any]:
        value = self.docs.get(name)
        return value if isinstance(value, dict) else {}


def _read_doc(out: Path, name: str, defects: list[Defect]) -> Any:
    path = out / name
    if not path.is_file():
        defects.append(Defect(kind="missing_file", reason=f"{name} is missing", member=name))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        defects.append(Defect(kind="bad_file", reason=f"{name} is unreadable: {err}", member=name))
        return None


def _open_dataset(out: Path) -> _Dataset:
    if not out.is_dir():
        raise NotADatasetError(f"{out} does not exist or is not a folder")
    if not any((out / name).is_file() for name in _DATASET_FILES[:3]):
        raise NotADatasetError(f"{out} is not a dataset folder (no plan/plan.json, manifest.json or index.json)")
    defects: list[Defect] = []
    docs = {name: _read_doc(out, name, defects) for name in _DATASET_FILES}
    return _Dataset(out, docs, defects)


def _planned(ds: _Dataset) -> dict[str, int | None]:
    """Shard name -> planned sample count, from the frozen plan (or, without it, the index)."""
    plan = ds.doc("plan/plan.json")
    if plan.get("shards"):
        return {s["name"]: s.get("count") for s in plan["shards"]}
    return {s["name"]: None for s in ds.doc("index.json").get("shards", [])}


def _classes(ds: _Dataset) -> tuple[str, ...] | None:
    plan, manifest = ds.doc("plan/plan.json"), ds.doc("manifest.json")
    classes = plan["classes"] if "classes" in plan else manifest.get("classes")
    return tuple(classes) if classes else None


def _required_members(ds: _Dataset, classes: tuple[str, ...] | None) -> tuple[str, ...]:
    """manifest.json 'members', with `.cls` exactly when the dataset has classes."""
    cls = CODECS["cls"].suffix
    listed = ds.doc("manifest.json").get("members") or [CODECS[m].suffix for m in ("rgb", "depth", "semseg", "json")]
    if (cls in listed) != (classes is not None):
        reason = (
            f"'members' {'lists' if cls in listed else 'lacks'} {cls} but the plan has {len(classes or ())} classes"
        )
        ds.defects.append(Defect(kind="bad_file", reason=reason, member="manifest.json"))
    return tuple(m for m in listed if m != cls) + ((cls,) if classes is not None else ())


def _maps(ds: _Dataset) -> tuple[MapSpec, ...]:
    mods = ds.doc("manifest.json").get("modalities") or {}
    return tuple(
        MapSpec(
            modality=name,
            member=info.get("member", CODECS[name].suffix if name in CODECS else name),
            num_classes=info.get("num_classes") if info.get("kind") == "classes" else None,
            ignore_id=info.get("ignore_id", IGNORE_ID),
        )
        for name, info in mods.items()
    )


def _shard_files(ds: _Dataset, planned: dict[str, int | None]) -> list[str]:
    """Check the shards/ folder against the plan; returns the planned shards whose tar is present."""
    folder, present = ds.out / "shards", set()
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for name in names:
        stem = name.removesuffix(".tar").removesuffix(".stats.json")
        if is_temp(folder / name):
            ds.defects.append(Defect(kind="stray_temp_file", reason=f"leftover temp file shards/{name}", member=name))
        elif stem == name:
            ds.defects.append(Defect(kind="unexpected_file", reason=f"shards/{name} is not a shard", member=name))
        elif stem not in planned:
            ds.defects.append(Defect(kind="extra_shard", reason=f"shards/{name} is not in the plan", shard=stem))
        elif name.endswith(".tar"):
            present.add(stem)
    for shard in planned:
        _expect_shard_files(ds, shard, names, present)
    return [s for s in planned if s in present]


def _stray_temps(ds: _Dataset) -> None:
    """Temp files of killed writers beside the dataset files (shards/ is checked with the shards)."""
    for folder in (ds.out, ds.out / "plan"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if is_temp(path):
                rel = path.relative_to(ds.out).as_posix()
                ds.defects.append(Defect(kind="stray_temp_file", reason=f"leftover temp file {rel}", member=rel))


def _expect_shard_files(ds: _Dataset, shard: str, names: list[str], present: set[str]) -> None:
    if shard not in present:
        lost = {s["shard"]: s.get("error", "") for s in ds.doc("manifest.json").get("failed_shards", [])}
        why = f" (build failed: {str(lost[shard]).splitlines()[0] if lost[shard] else '?'})" if shard in lost else ""
        ds.defects.append(Defect(kind="missing_shard", reason=f"shards/{shard}.tar is missing{why}", shard=shard))
    elif f"{shard}.stats.json" not in names:
        reason = f"shards/{shard}.stats.json (the done marker) is missing"
        ds.defects.append(Defect(kind="missing_marker", reason=reason, shard=shard))


def _expects(ds: _Dataset, shards: list[str], deep: bool) -> list[ShardExpect]:
    classes = _classes(ds)
    members, maps = _required_members(ds, classes), _maps(ds)
    return [
        ShardExpect(
            name=s, path=str(ds.out / "shards" / f"{s}.tar"), members=members, maps=maps, classes=classes, deep=deep
        )
        for s in shards
    ]


def _workers(cfg: VerifyConfig, shards: int, samples: int) -> int:
    """Auto (0): one process per CPU, or none for a small dataset, where starting a pool costs more."""
    if cfg.workers == 0 and samples < _POOL_MIN_SAMPLES:
        return 1
    wanted = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    return max(1, min(wanted, shards))


def _failed_check(name: str, err: BaseException) -> ShardResult:
    defect = Defect(kind="check_failed", reason=f"could not check: {type(err).__name__}: {err}", shard=name)
    return ShardResult(name, defects=[defect])


def _in_pool(expects: list[ShardExpect], workers: int) -> Iterator[ShardResult]:
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(check_shard, e): e.name for e in expects}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as err:  # a worker died or raised: that shard is unverified, and says so
                yield _failed_check(futures[fut], err)


def _in_process(expects: list[ShardExpect]) -> Iterator[ShardResult]:
    for e in expects:
        try:
            yield check_shard(e)
        except Exception as err:
            yield _failed_check(e.name, err)


def _check_shards(expects: list[ShardExpect], workers: int, total: int, cfg: VerifyConfig) -> list[ShardResult]:
    label = "verify --deep" if cfg.deep else "verify"
    bar = tqdm(total=total, unit="sample", desc=label, disable=cfg.quiet, file=sys.stderr, dynamic_ncols=True)
    results: dict[str, ShardResult] = {}
    try:
        for result in _in_process(expects) if workers == 1 else _in_pool(expects, workers):
            results[result.name] = result
            bar.update(result.samples)
    finally:
        bar.close()
    return [results[e.name] for e in expects]


def _mismatch(shard: str, kind: str, what: str, actual: Any, records: dict[str, Any]) -> list[Defect]:
    """One defect when the file's `what` differs from what index.json / the stats marker record."""
    wrong = {src: v for src, v in records.items() if v is not None and v != actual}
    if not wrong:
        return []
    said = ", ".join(f"{src} says {v}" for src, v in wrong.items())
    return [Defect(kind=kind, reason=f"{what} is {actual}; {said}", shard=shard)]


def _stats(ds: _Dataset, shard: str) -> dict[str, Any]:
    path = ds.out / "shards" / f"{shard}.stats.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        ds.defects.append(Defect(kind="bad_file", reason=f"unreadable stats: {err}", shard=shard))
        return {}
    return value if isinstance(value, dict) else {}


_RECORDS = (  # (defect kind, what, index.json field = ShardResult attribute, stats field)
    ("sha256_mismatch", "sha256", "sha256", "sha256"),
    ("bytes_mismatch", "the size in bytes", "bytes", "bytes"),
    ("count_mismatch", "the number of samples", "samples", "written"),
)


def _record_checks(result: ShardResult, index: dict[str, Any] | None, stats: dict[str, Any]) -> list[Defect]:
    name, idx = result.name, index or {}
    found = [] if index is not None else [Defect(kind="not_in_index", reason="no entry in index.json", shard=name)]
    for kind, what, field_name, stats_field in _RECORDS:
        records = {"index.json": idx.get(field_name), f"stats '{stats_field}'": stats.get(stats_field)}
        found += _mismatch(name, kind, what, getattr(result, field_name), records)
    return found


def _stats_checks(shard: str, stats: dict[str, Any], planned: int | None) -> list[Defect]:
    if not stats:
        return []
    found = _mismatch(shard, "count_mismatch", "the planned count (plan/)", planned, {"stats": stats.get("planned")})
    written, failed = stats.get("written", 0), stats.get("failed", 0)
    if written + failed != stats.get("planned"):
        reason = f"stats: written {written} + failed {failed} != planned {stats.get('planned')}"
        found.append(Defect(kind="totals_mismatch", reason=reason, shard=shard))
    if failed != len(stats.get("failures", [])):
        reason = f"stats: failed {failed} but {len(stats.get('failures', []))} failures listed"
        found.append(Defect(kind="failures_mismatch", reason=reason, shard=shard))
    return found


def _duplicate_keys(results: list[ShardResult]) -> list[Defect]:
    first: dict[str, str] = {}
    found = []
    for result in results:
        for key in result.keys:
            if key in first:
                reason = f"key also used in shard {first[key]}"
                found.append(Defect(kind="duplicate_key", reason=reason, shard=result.name, key=key))
            else:
                first[key] = result.name
    return found


def _index_checks(ds: _Dataset, planned: dict[str, int | None]) -> dict[str, dict[str, Any]]:
    """index.json entries by shard name; entries for unplanned shards and a stale wids index are defects."""
    entries = {str(s.get("name")): s for s in ds.doc("index.json").get("shards", []) if isinstance(s, dict)}
    for name in sorted(set(entries) - set(planned), key=str):
        ds.defects.append(Defect(kind="index_mismatch", reason="index.json lists a shard not in the plan", shard=name))
    wids = ds.docs.get("wids-index.json")
    if isinstance(wids, dict):
        expected = [{"url": s.get("url"), "nsamples": s.get("samples")} for s in entries.values()]
        listed = [{"url": s.get("url"), "nsamples": s.get("nsamples")} for s in wids.get("shardlist", [])]
        if listed != expected:
            reason = "wids-index.json 'shardlist' does not match index.json (urls and sample counts)"
            ds.defects.append(Defect(kind="index_mismatch", reason=reason, member="wids-index.json"))
    return entries


def _failures(ds: _Dataset, all_stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    listed = [{"shard": s, **f} for s, st in all_stats.items() for f in st.get("failures", [])]
    manifest = ds.docs.get("manifest.json")
    recorded = manifest.get("failures") if isinstance(manifest, dict) else None
    if recorded is not None and recorded != [{k: v for k, v in f.items() if k != "shard"} for f in listed]:
        reason = f"manifest lists {len(recorded)} failures, the stats markers {len(listed)} (or they differ)"
        ds.defects.append(Defect(kind="failures_mismatch", reason=reason, member="manifest.json"))
    return listed


def _totals(ds: _Dataset, planned: dict[str, int | None], all_stats: dict[str, dict[str, Any]], samples: int) -> dict:
    manifest = ds.doc("manifest.json")
    lost = sum(s.get("planned", 0) for s in manifest.get("failed_shards", []))
    for s in manifest.get("failed_shards", []):
        reason = f"the build lost this shard ({s.get('planned')} images): {str(s.get('error', '')).splitlines()[:1]}"
        ds.defects.append(Defect(kind="shard_failed", reason=reason, shard=s.get("shard")))
    actual = {
        "inputs": sum(n or 0 for n in planned.values()),
        "written": samples,
        "failed": sum(st.get("failed", 0) for st in all_stats.values()) + lost,
    }
    recorded = manifest.get("totals", {})
    for name, value in actual.items():
        if name in recorded and recorded[name] != value:
            reason = f"manifest totals.{name} is {recorded[name]}, the shards give {value}"
            ds.defects.append(Defect(kind="totals_mismatch", reason=reason, member="manifest.json"))
    if actual["inputs"] != actual["written"] + actual["failed"]:
        reason = f"inputs {actual['inputs']} != written {actual['written']} + failed {actual['failed']}"
        ds.defects.append(Defect(kind="totals_mismatch", reason=reason))
    if manifest and not manifest.get("complete", False):
        ds.defects.append(Defect(kind="totals_mismatch", reason="manifest says the build is not complete"))
    return actual


def _cross_check(ds: _Dataset, planned: dict[str, int | None], results: list[ShardResult]) -> VerifyReport:
    index = _index_checks(ds, planned)
    all_stats = {r.name: _stats(ds, r.name) for r in results}
    report = VerifyReport(out=str(ds.out), deep=False, shards_expected=len(planned), shards_checked=len(results))
    for r in results:
        report.defects += r.defects
        report.defects += _record_checks(r, index.get(r.name), all_stats[r.name])
        report.defects += _stats_checks(r.name, all_stats[r.name], planned.get(r.name))
    report.defects += _duplicate_keys(results)
    report.failures = _failures(ds, all_stats)
    report.totals = _totals(ds, planned, all_stats, sum(r.samples for r in results))
    report.samples, report.bytes = sum(r.samples for r in results), sum(r.bytes for r in results)
    return report


def _expected_samples(ds: _Dataset, shards: list[str], planned: dict[str, int | None]) -> int:
    """For the progress bar: samples per index.json, else the planned count."""
    index = {s.get("name"): s.get("samples") for s in ds.doc("index.json").get("shards", []) if isinstance(s, dict)}
    return sum(index.get(s) or planned.get(s) or 0 for s in shards)


def verify_dataset(cfg: VerifyConfig) -> VerifyReport:
    """Check the dataset in `cfg.out`. Raises NotADatasetError when there is no dataset to check."""
    started = time.perf_counter()
    ds = _open_dataset(cfg.out)
    planned = _planned(ds)
    shards = _shard_files(ds, planned)
    _stray_temps(ds)
    expects = _expects(ds, shards, cfg.deep)
    total = _expected_samples(ds, shards, planned)
    workers = _workers(cfg, len(expects), total)
    results = _check_shards(expects, workers, total, cfg)
    report = _cross_check(ds, planned, results)
    report.defects = ds.defects + report.defects
    report.deep, report.workers, report.seconds = cfg.deep, workers, time.perf_counter() - started
    if cfg.json_path is not None:
        cfg.json_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return report


def _where(d: Defect) -> str:
    parts = [d.shard or "", f"{d.key}.{d.member}" if d.key and d.member else d.key or d.member or ""]
    return " ".join(p for p in parts if p) or "dataset"


def summary(report: VerifyReport, max_listed: int = 20) -> str:
    """Short human output: one status line, then the first defects and recorded failures."""
    mode = "deep" if report.deep else "fast"
    status = "OK" if report.ok else f"{len(report.defects)} DEFECTS"
    lines = [
        f"{report.out}: {status} ({mode}): {report.samples} samples in {report.shards_checked}/"
        f"{report.shards_expected} shards, {report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s "
        f"({report.samples_per_s:.1f} samples/s, {report.mb_per_s:.1f} MB/s, {report.workers} workers); "
        f"{len(report.failures)} inputs recorded as failed"
    ]
    lines += [f"  {d.kind}: {_where(d)}: {d.reason}" for d in report.defects[:max_listed]]
    if len(report.defects) > max_listed:
        lines.append(f"  ... {len(report.defects) - max_listed} more defects (use --json for all)")
    lines += [f"  failed input: {f.get('path')}: {f.get('error')}" for f in report.failures[:5]]
    if len(report.failures) > 5:
        lines.append(f"  ... {len(report.failures) - 5} more failed inputs (use --json)")
    return "\n".join(lines)
