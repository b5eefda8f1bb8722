"""Verify one shard on its own (runs in a worker process): tar structure, member names, sample grouping,
and in deep mode every sample's decoded content. Dataset-level cross-checks live in `pipeline.verify.verifier`."""

from __future__ import annotations

import builtins
import time
from collections import Counter
from dataclasses import dataclass, field

from pipeline.format import stores
from pipeline.format.codecs import BY_SUFFIX, CODECS, decode_member, split_member
from pipeline.format.contract import key_position
from pipeline.verify.sample import Defect, MapSpec, check_sample
from pipeline.verify.tar import TarMember, TarScan, scan_tar

JSON = CODECS["json"].suffix


@dataclass(frozen=True, kw_only=True)
class ShardExpect:
    """What one shard must hold: everything a worker needs, small and picklable."""

    name: str
    path: str
    members: tuple[str, ...]  # required member suffixes of every sample, e.g. ("rgb.jpg", ..., "json")
    maps: tuple[MapSpec, ...]
    classes: tuple[str, ...] | None
    deep: bool
    index: int = 0  # the shard's position in the plan (its keys start with it)
    sources: tuple[str, ...] | None = None  # the plan's source paths of this shard, in order (None: no plan)
    entry_classes: tuple[int | None, ...] = ()  # the plan's class index of each source
    failed: tuple[str, ...] = ()  # sources the stats marker records as failed
    plan_id: str = ""  # format 2: every sample's json names it


@dataclass
class ShardResult:
    name: str
    sha256: str = ""
    bytes: int = 0
    keys: list[str] = field(default_factory=list)  # distinct sample keys in order of first appearance
    jsons: dict[str, builtins.bytes] = field(default_factory=dict)  # the first json member of each key
    defects: list[Defect] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return len(self.keys)


@dataclass
class _Grouping:
    """Runs of adjacent members per key: a key with two runs is split (or duplicated)."""

    runs: dict[str, list[list[str]]] = field(default_factory=dict)
    current: str | None = None
    pending: list[tuple[str, bytes | None]] = field(default_factory=list)


def _name_problem(name: str) -> str | None:
    if "/" in name:
        return "member name has a folder part; members must be KEY.SUFFIX at the archive root"
    try:
        _, suffix = split_member(name)
    except ValueError as err:
        return str(err)
    if suffix not in BY_SUFFIX:
        return f"suffix {suffix!r} is not in the codec table (allowed: {', '.join(sorted(BY_SUFFIX))})"
    return None


def _defect(shard: str, kind: str, reason: str, name: str | None = None) -> Defect:
    if name is None:
        return Defect(kind=kind, reason=reason, shard=shard)
    key, _, suffix = name.partition(".")
    return Defect(kind=kind, reason=reason, shard=shard, key=key or None, member=suffix or name)


def _close_run(group: _Grouping, expect: ShardExpect, result: ShardResult) -> None:
    if group.current is None:
        return
    key, members = group.current, group.pending
    if key not in group.runs:
        result.keys.append(key)
    group.runs.setdefault(key, []).append([suffix for suffix, _ in members])
    if expect.deep:
        data = {suffix: blob for suffix, blob in members if blob is not None}  # (all members kept when deep)
        result.defects.extend(check_sample(key, data, expect.name, expect.maps, expect.classes))
    group.current, group.pending = None, []


def _add_member(member: TarMember, group: _Grouping, expect: ShardExpect, result: ShardResult) -> None:
    problem = _name_problem(member.name)
    if problem is not None:
        result.defects.append(_defect(expect.name, "bad_member_name", problem, member.name))
        return
    key, suffix = split_member(member.name)
    if suffix == JSON and member.data is not None:
        result.jsons.setdefault(key, member.data)
    if key != group.current:
        _close_run(group, expect, result)
        group.current = key
    group.pending.append((suffix, member.data))


def _split_or_duplicate(shard: str, key: str, runs: list[list[str]]) -> Defect:
    counts = Counter(s for run in runs for s in run)
    if any(n > 1 for n in counts.values()):
        reason = f"key appears in {len(runs)} separate runs of members with repeated members (a duplicate sample)"
        return Defect(kind="duplicate_key", reason=reason, shard=shard, key=key)
    reason = f"members of this sample are not adjacent ({len(runs)} runs: {' | '.join(map(' '.join, runs))})"
    return Defect(kind="members_not_adjacent", reason=reason, shard=shard, key=key)


def _sample_defects(shard: str, key: str, runs: list[list[str]], required: tuple[str, ...]) -> list[Defect]:
    found: list[Defect] = [_split_or_duplicate(shard, key, runs)] if len(runs) > 1 else []
    for run in runs:
        for suffix, n in Counter(run).items():
            if n > 1:
                found.append(Defect(kind="duplicate_member", reason=f"{n} copies", shard=shard, key=key, member=suffix))
    present = {s for run in runs for s in run}
    for suffix in required:
        if suffix not in present:
            found.append(Defect(kind="missing_member", reason="required", shard=shard, key=key, member=suffix))
    for suffix in sorted(present - set(required)):
        reason = "not part of this dataset's samples (manifest.json 'members')"
        found.append(Defect(kind="extra_member", reason=reason, shard=shard, key=key, member=suffix))
    return found


def _sample_problem(expect: ShardExpect, pos: int, data: bytes | None) -> str | None:
    """Why one sample's json is not the plan's entry at `pos` (None when it is, or when there is no json:
    the member check reports that)."""
    if data is None:
        return None
    try:
        meta = decode_member(JSON, data)
    except ValueError as err:
        return f"sample json unreadable: {err}"
    assert expect.sources is not None
    source, planned = meta.get("source"), expect.sources[pos]
    if meta.get("dataset", "") != expect.plan_id:
        return f"the sample json names dataset {str(meta.get('dataset'))[:12]!r}, not this plan's"
    if source != planned:
        return f"sample is of source {source!r}; the plan has {planned!r} at this position"
    cls = expect.entry_classes[pos] if pos < len(expect.entry_classes) else None
    if expect.classes is not None and cls is not None and meta.get("class") != expect.classes[cls]:
        return f"sample says class {meta.get('class')!r}; the plan has {expect.classes[cls]!r}"
    return None


def _plan_defects(expect: ShardExpect, result: ShardResult) -> list[Defect]:
    """The samples are this shard's plan entries, in order; the plan entries missing are the failures."""
    if expect.sources is None:
        return []
    found, seen, last = [], set(), -1
    for key in result.keys:
        pos = key_position(key, expect.index)
        if pos is None or pos >= len(expect.sources):
            found.append(
                Defect(kind="not_in_plan", reason="key is no position of this shard's plan", shard=expect.name, key=key)
            )
            continue
        if pos <= last:
            found.append(Defect(kind="not_in_plan", reason="sample is out of plan order", shard=expect.name, key=key))
        last = max(last, pos)
        seen.add(pos)
        problem = _sample_problem(expect, pos, result.jsons.get(key))
        if problem:
            found.append(Defect(kind="not_in_plan", reason=problem, shard=expect.name, key=key, member=JSON))
    failed = set(expect.failed)
    for pos, source in enumerate(expect.sources):
        if pos not in seen and source not in failed:
            reason = f"plan entry {source!r} is neither in the shard nor recorded as failed"
            found.append(Defect(kind="sample_missing", reason=reason, shard=expect.name))
    return found


def check_shard(expect: ShardExpect) -> ShardResult:
    """Read the shard once, front to back; every problem becomes a Defect in the result."""
    started, result, scan, group = time.perf_counter(), ShardResult(expect.name), TarScan(), _Grouping()
    keep = True if expect.deep else (lambda name: name.endswith("." + JSON))
    with stores.open_input(expect.path) as (f, _):
        for member in scan_tar(f, scan, keep_data=keep):
            if member.regular:
                _add_member(member, group, expect, result)
    _close_run(group, expect, result)
    result.defects.extend(_defect(expect.name, p.kind, p.reason, p.member) for p in scan.problems)
    for key, runs in group.runs.items():
        result.defects.extend(_sample_defects(expect.name, key, runs, expect.members))
    result.defects.extend(_plan_defects(expect, result))
    result.jsons = {}  # not needed past this point (and not worth sending back from a worker)
    result.sha256, result.bytes = scan.sha256, scan.bytes
    result.seconds = time.perf_counter() - started
    return result
