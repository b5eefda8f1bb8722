"""`mmforge verify`: prove a built dataset is complete, intact and true to the data contract.

One entry point, `verify_dataset(VerifyConfig) -> VerifyReport`. First the document checks
(`pipeline.verify.docs`: every document parsed and validated, cross-checked with the others and the plan,
urls inside OUT). Fast mode then reads every shard once (sha256, bytes, strict tar walk, member names,
sample grouping, and each sample's json against the frozen plan: source path, order, dataset id). Deep mode
also decodes every member with the codec table and checks pixel formats, geometry, class ids and the sample
json, in several processes.

Defect kinds (stable identifiers, `Defect.kind`):
- files: missing_file, bad_document, missing_shard, missing_marker, extra_shard, stray_temp_file,
  unexpected_file, build_in_progress
- records: sha256_mismatch, bytes_mismatch, count_mismatch, not_in_index, index_mismatch, bad_url,
  plan_mismatch, totals_mismatch, failures_mismatch, shard_failed, check_failed
- tar: truncated, bad_header, trailing_data, bad_member_type
- samples: bad_member_name, missing_member, extra_member, duplicate_member, members_not_adjacent,
  duplicate_key, not_in_plan, sample_missing
- deep: undecodable, wrong_pixel_format, size_mismatch, class_id_out_of_range, bad_values (a codec's own
  value check, e.g. normals not of unit length), bad_json, bad_class, rgb_not_source
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

from labelers.plugins import unavailable
from pipeline.format import fs
from pipeline.format.codecs import BY_SUFFIX, CODECS, IGNORE_ID
from pipeline.format.codecs import ENTRY_POINT_GROUP as CODEC_PLUGINS
from pipeline.format.contract import url_problem
from pipeline.format.outputs import check_output
from pipeline.format.schema import ConfigError, to_plain
from pipeline.format.stores import Location
from pipeline.verify.docs import DatasetDocs, NotADatasetError, checked_documents
from pipeline.verify.sample import Defect, MapSpec
from pipeline.verify.shard import ShardExpect, ShardResult, check_shard

__all__ = ["Defect", "NotADatasetError", "VerifyConfig", "VerifyReport", "summary", "verify_dataset"]

_POOL_MIN_SAMPLES = 500  # below this, auto workers verify in-process (a process pool costs ~0.5-1 s to start)


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    out: Location  # a dataset folder or store prefix
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
    remedy: list[str] = field(default_factory=list)  # what to run to repair the defects found

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


def _required_members(docs: DatasetDocs) -> tuple[str, ...]:
    """manifest.json 'members', with `.cls` exactly when the dataset has classes."""
    cls = CODECS["cls"].suffix
    default = [CODECS[m].suffix for m in ("rgb", "depth", "semseg", "json")]
    listed = list(docs.manifest.members) if docs.manifest is not None else default
    return tuple(m for m in listed if m != cls) + ((cls,) if docs.classes is not None else ())


def _maps(docs: DatasetDocs) -> tuple[MapSpec, ...]:
    mods = docs.manifest.modalities if docs.manifest is not None else {}
    maps = []
    for name, info in mods.items():
        if info.member not in BY_SUFFIX:
            docs.add(
                "bad_document",
                f"modality {name!r} names member {info.member!r}, not in the codec table{unavailable(CODEC_PLUGINS)}",
                member="manifest.json",
            )
            continue
        maps.append(
            MapSpec(
                modality=name,
                member=info.member,
                num_classes=info.num_classes,
                ignore_id=info.ignore_id if info.ignore_id is not None else IGNORE_ID,
            )
        )
    return tuple(maps)


def _expects(docs: DatasetDocs, deep: bool) -> list[ShardExpect]:
    members, maps, planned = _required_members(docs), _maps(docs), docs.planned
    order = list(planned)
    expects = []
    urls = {e.name: e.url for e in docs.index.shards} if docs.index is not None else {}
    for shard in docs.present:
        if shard in urls and url_problem(docs.paths, shard, urls[shard]):
            continue  # a bad_url defect already; not read through it
        entries = docs.entries.get(shard)
        stats = docs.stats.get(shard)
        expects.append(
            ShardExpect(
                name=shard,
                path=docs.shard_location(shard),
                members=members,
                maps=maps,
                classes=docs.classes,
                deep=deep,
                index=order.index(shard),
                sources=tuple(p for p, _ in entries.entries) if entries is not None and stats is not None else None,
                entry_classes=tuple(c for _, c in entries.entries) if entries is not None else (),
                failed=tuple(f.path for f in stats.failures) if stats is not None else (),
                plan_id=docs.plan_id,
            )
        )
    return expects


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


def _record_checks(docs: DatasetDocs, result: ShardResult) -> list[Defect]:
    """What the shard's bytes are against what index.json and its stats marker record."""
    found = []
    entry, stats = docs.index_entries().get(result.name), docs.stats.get(result.name)
    for kind, what, actual, idx, st in (
        ("sha256_mismatch", "sha256", result.sha256, entry and entry.sha256, stats and stats.sha256),
        ("bytes_mismatch", "the size in bytes", result.bytes, entry and entry.bytes, stats and stats.bytes),
        ("count_mismatch", "the number of samples", result.samples, entry and entry.samples, stats and stats.written),
    ):
        wrong = {src: v for src, v in (("index.json", idx), ("stats", st)) if v is not None and v != actual}
        if wrong:
            said = ", ".join(f"{src} says {v}" for src, v in wrong.items())
            found.append(Defect(kind=kind, reason=f"{what} is {actual}; {said}", shard=result.name))
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


def _failures(docs: DatasetDocs) -> list[dict[str, Any]]:
    return [{"shard": s, **to_plain(f)} for s, st in docs.stats.items() for f in st.failures]


def _report(docs: DatasetDocs, results: list[ShardResult], cfg: VerifyConfig) -> VerifyReport:
    report = VerifyReport(
        out=str(docs.where),
        deep=cfg.deep,
        shards_expected=len(docs.planned),
        shards_checked=len(results),
    )
    report.defects = list(docs.defects)
    for r in results:
        report.defects += r.defects
        report.defects += _record_checks(docs, r)
    report.defects += _duplicate_keys(results)
    report.failures = _failures(docs)
    lost = sum(s.planned for s in docs.manifest.failed_shards) if docs.manifest is not None else 0
    report.totals = {
        "inputs": sum(n or 0 for n in docs.planned.values()),
        "written": sum(r.samples for r in results),
        "failed": sum(st.failed for st in docs.stats.values()) + lost,
    }
    report.samples, report.bytes = sum(r.samples for r in results), sum(r.bytes for r in results)
    report.remedy = _remedy(docs, results, report.defects)
    return report


# Defects a rerun of the build repairs wherever they are: it rewrites these documents and removes temp files.
_REWRITTEN = {"index.json", "wids-index.json", "manifest.json"}
_RERUN_KINDS = {"stray_temp_file", "totals_mismatch", "failures_mismatch", "not_in_index", "index_mismatch"}
_FOREIGN_KINDS = {"unexpected_file", "extra_shard"}


def _rebuilt_by_rerun(docs: DatasetDocs, results: list[ShardResult]) -> set[str]:
    """The planned shards a rerun of the build rebuilds (the build's own check of what it keeps): no readable
    stats marker of this plan, no tar, or a tar whose size or sha256 is not what its marker records."""
    read = {r.name: (r.bytes, r.sha256) for r in results}
    rebuilt = set()
    for shard in docs.planned:
        stats = docs.stats.get(shard)
        if stats is None or stats.plan_id != docs.plan_id or read.get(shard) != (stats.bytes, stats.sha256):
            rebuilt.add(shard)
    return rebuilt


def _build_command(docs: DatasetDocs) -> str | None:
    """The command recorded in manifest.json, or None."""
    return docs.manifest.command if docs.manifest is not None and docs.manifest.command else None


def _rerun_words(docs: DatasetDocs) -> str:
    """How to say "rerun the build": the recorded command, else one made from the recorded source."""
    command = _build_command(docs)
    if command:
        return f"rerun `{command}` (the same command)"
    source = docs.manifest.source.path if docs.manifest is not None else docs.plan.source if docs.plan else "SRC"
    return (
        f"rerun the build that made it, `mmforge build-dataset {source} {docs.where}` with the same recipe and "
        "options (this manifest does not record the command),"
    )


def _remedy(docs: DatasetDocs, results: list[ShardResult], defects: list[Defect]) -> list[str]:
    """What to run for the defects found: which of them a rerun of the same build repairs, and what else."""
    if not defects:
        return []
    rebuilt = _rebuilt_by_rerun(docs, results)
    in_rebuilt = [d for d in defects if d.shard is not None and d.shard in rebuilt and d.kind not in _FOREIGN_KINDS]
    damaged = sorted({d.shard for d in in_rebuilt if d.shard is not None})
    rewritten = [
        d
        for d in defects
        if d.kind in _RERUN_KINDS
        or (d.kind in ("missing_file", "bad_document") and d.shard is None and d.member in _REWRITTEN)
        or (d.kind in ("sha256_mismatch", "bytes_mismatch") and d not in in_rebuilt)  # index.json's record only
    ]
    rest = [d for d in defects if d not in rewritten and d not in in_rebuilt]
    lines = []
    if any(d.kind == "build_in_progress" for d in rest):
        lines.append("a build is writing this dataset: verify again when it has finished")
        rest = [d for d in rest if d.kind != "build_in_progress"]
    if damaged:
        lines.append(f"{_rerun_words(docs)} to rebuild the {len(damaged)} damaged shards ({_names(damaged)})")
    elif rewritten:
        lines.append(f"{_rerun_words(docs)} to rewrite the dataset's documents (index.json, manifest.json)")
    foreign = [d for d in rest if d.kind in _FOREIGN_KINDS]
    if foreign:
        lines.append(
            f"move away the {len(foreign)} files that are not this dataset's (listed above); a build refuses them"
        )
    others = [d for d in rest if d.kind not in _FOREIGN_KINDS]
    if others:
        kinds = ", ".join(sorted({d.kind for d in others}))
        command = _build_command(docs) or f"mmforge build-dataset SRC {docs.where}"
        lines.append(
            f"{len(others)} defects ({kinds}) are not repaired by a rerun (the shard matches its stats, or the plan "
            f"is wrong): `{command} --overwrite` builds the whole dataset again"
        )
    return lines


def _names(shards: list[str], at_most: int = 5) -> str:
    more = f" and {len(shards) - at_most} more" if len(shards) > at_most else ""
    return ", ".join(shards[:at_most]) + more


def _expected_samples(docs: DatasetDocs) -> int:
    """For the progress bar: samples per index.json, else the planned count."""
    index = {s.name: s.samples for s in docs.index.shards} if docs.index is not None else {}
    return sum(index.get(s) or docs.planned.get(s) or 0 for s in docs.present)


def verify_dataset(cfg: VerifyConfig) -> VerifyReport:
    """Check the dataset in `cfg.out`. Raises NotADatasetError when there is no dataset to check."""
    started = time.perf_counter()
    problem = fs.output_file_problem(cfg.json_path) if cfg.json_path is not None else None
    if problem:  # said before the dataset is read, and never blamed on it
        raise ConfigError(f"--json {cfg.json_path}{problem}")
    check_output(cfg.json_path, "--json", (cfg.out,))
    with checked_documents(cfg.out) as docs:
        return _verify(cfg, docs, started)


def _verify(cfg: VerifyConfig, docs: DatasetDocs, started: float) -> VerifyReport:
    expects = _expects(docs, cfg.deep)
    total = _expected_samples(docs)
    workers = _workers(cfg, len(expects), total)
    results = _check_shards(expects, workers, total, cfg)
    report = _report(docs, results, cfg)
    report.workers, report.seconds = workers, time.perf_counter() - started
    if cfg.json_path is not None:
        try:
            fs.write_bytes_atomic(cfg.json_path, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
        except OSError as err:  # a full disk, a folder that went away: the report, not the dataset
            raise ConfigError(f"--json {cfg.json_path}: cannot write the report: {err.strerror or err}") from None
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
    lines += [f"repair: {line}" for line in report.remedy]
    return "\n".join(lines)
