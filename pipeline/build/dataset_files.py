"""The dataset-level documents written by the driver at the end of a build: index.json, the wids index and
manifest.json (typed in `pipeline.format.contract`). Built from the shards' stats, the record of what each
shard holds."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from importlib import metadata

from labelers import LabelerSpec
from labelers.classes import class_table, palette_for
from pipeline.build.plan import Plan
from pipeline.build.recipe import Recipe, to_dict
from pipeline.format import contract
from pipeline.format.codecs import CODECS, IGNORE_ID
from pipeline.format.contract import (
    DatasetPaths,
    Index,
    IndexEntry,
    LostShard,
    Manifest,
    ModalityInfo,
    NodeThroughput,
    ShardStats,
    SourceInfo,
    Totals,
    WidsIndex,
    WidsShard,
)

_PACKAGES = ("multimae-forge", "torch", "transformers", "pillow", "numpy", "webdataset", "ray")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _modality(spec: LabelerSpec) -> ModalityInfo:
    """What a label map is, from its codec's facts and its labeler's spec."""
    codec = CODECS[spec.modality]
    if codec.kind == "class_map":
        n = spec.num_classes or 0
        return ModalityInfo(
            member=codec.suffix,
            labeler=spec.labeler_id,
            kind=spec.output,
            dtype=codec.dtype,
            num_classes=spec.num_classes,
            ignore_id=IGNORE_ID,
            classes=class_table(spec.classes).names if spec.classes else None,
            palette=tuple(palette_for(spec.classes, n)[: 3 * n]),
        )
    return ModalityInfo(
        member=codec.suffix,
        labeler=spec.labeler_id,
        kind=spec.output,
        dtype=codec.dtype,
        encoding=codec.encoding,
    )


def index_doc(plan: Plan, stats: dict[str, ShardStats]) -> Index:
    shards = tuple(
        IndexEntry(
            name=s.name,
            url=DatasetPaths.url(s.name),
            samples=stats[s.name].written,
            bytes=stats[s.name].bytes,
            sha256=stats[s.name].sha256,
        )
        for s in plan.shards
        if s.name in stats
    )
    total = sum(s.samples for s in shards)
    return Index(format=plan.format, plan_id=plan.plan_id, split=plan.split, shards=shards, total_samples=total)


def wids_doc(index: Index, name: str) -> WidsIndex:
    return WidsIndex(name=name, shardlist=tuple(WidsShard(url=s.url, nsamples=s.samples) for s in index.shards))


def node_throughput(stats: dict[str, ShardStats]) -> dict[str, NodeThroughput]:
    """Per node (stats `node`), the shards and images it made and its shard tasks' seconds."""
    by_node: dict[str, list[ShardStats]] = {}
    for s in stats.values():
        by_node.setdefault(s.node or "unknown", []).append(s)
    out = {}
    for node, made in sorted(by_node.items()):
        images, seconds = sum(s.written for s in made), sum(s.seconds for s in made)
        out[node] = NodeThroughput(
            host=made[0].host,
            shards=len(made),
            images=images,
            seconds=round(seconds, 3),
            images_per_task_s=round(images / seconds, 2) if seconds > 0 else 0.0,
        )
    return out


def manifest_doc(
    plan: Plan, recipe: Recipe, stats: dict[str, ShardStats], failed_shards: dict[str, str], command: str = ""
) -> Manifest:
    failures = tuple(f for s in plan.shards if s.name in stats for f in stats[s.name].failures)
    lost = tuple(
        LostShard(shard=s.name, planned=len(s.entries), error=failed_shards[s.name])
        for s in plan.shards
        if s.name in failed_shards
    )
    kinds: Counter[str] = Counter()
    for v in stats.values():
        kinds.update(v.source_kinds)
    members = [CODECS["rgb"].suffix, *(CODECS[s.modality].suffix for s in recipe.labelers), CODECS["json"].suffix]
    return Manifest(
        format=plan.format,
        plan_id=plan.plan_id,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        recipe=to_dict(recipe),
        recipe_fingerprint=plan.recipe_fingerprint,
        source=SourceInfo(
            path=plan.source,
            fingerprint=plan.source_fingerprint,
            split=plan.split,
            num_inputs=plan.num_inputs,
            layout="class_folders" if plan.classes else "flat_or_nested",
        ),
        classes=plan.classes,
        packages={p: _version(p) for p in _PACKAGES},
        labelers=tuple(s.to_dict() for s in recipe.labelers),
        modalities={s.modality: _modality(s) for s in recipe.labelers},
        members=tuple(members + ([CODECS["cls"].suffix] if plan.classes else [])),
        meaningless_labels=any(s.meaningless for s in recipe.labelers),
        totals=Totals(
            inputs=plan.num_inputs,
            written=sum(v.written for v in stats.values()),
            failed=len(failures) + sum(x.planned for x in lost),
            shards=len(plan.shards),
            shards_complete=len(stats),
            shards_failed=len(lost),
            source_kinds=dict(sorted(kinds.items())),
            rgb_reencoded=sum(v.rgb_reencoded for v in stats.values()),
        ),
        failures=failures,
        failed_shards=lost,
        complete=not lost and len(stats) == len(plan.shards),
        nodes=node_throughput(stats),
        command=command,
    )


def write_dataset_files(
    paths: DatasetPaths,
    plan: Plan,
    recipe: Recipe,
    stats: dict[str, ShardStats],
    failed_shards: dict[str, str],
    command: str = "",
) -> Manifest:
    index = index_doc(plan, stats)
    contract.write_doc(paths.index, index)
    contract.write_doc(paths.wids_index, wids_doc(index, f"{recipe.name}-{plan.split}"))
    manifest = manifest_doc(plan, recipe, stats, failed_shards, command)
    contract.write_doc(paths.manifest, manifest)
    return manifest
