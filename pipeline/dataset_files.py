"""The dataset-level files written by the driver at the end of a build: index.json, the wids index and
manifest.json. Built from the shards' stats, which are the record of what each shard holds."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from labelers import LabelerSpec
from labelers.coco import coco_panoptic_classes, palette
from pipeline import fs
from pipeline.codecs import CODECS, IGNORE_ID
from pipeline.config import Recipe, to_dict
from pipeline.plan import Plan

FORMAT = 1
WIDS_INDEX = "wids-index.json"
_PACKAGES = ("multimae-forge", "torch", "transformers", "pillow", "numpy", "webdataset", "ray")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _modality(spec: LabelerSpec) -> dict[str, Any]:
    info: dict[str, Any] = {"member": CODECS[spec.modality].suffix, "labeler": spec.labeler_id, "kind": spec.output}
    if spec.output == "classes":
        info.update(dtype="uint8", num_classes=spec.num_classes, ignore_id=IGNORE_ID)
        if spec.num_classes == 133:
            info["classes"] = [c.name for c in coco_panoptic_classes()]
            info["palette"] = palette(133)[: 3 * 133]
    else:
        info.update(dtype="uint16", encoding="value = png * scale + offset, per sample in the sample json")
    return info


def index_doc(plan: Plan, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shards = [
        {
            "name": s.name,
            "url": f"shards/{s.name}.tar",
            "samples": stats[s.name]["written"],
            "bytes": stats[s.name]["bytes"],
            "sha256": stats[s.name]["sha256"],
        }
        for s in plan.shards
        if s.name in stats
    ]
    return {"format": FORMAT, "split": plan.split, "shards": shards, "total_samples": sum(s["samples"] for s in shards)}


def wids_doc(index: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s["url"], "nsamples": s["samples"]} for s in index["shards"]],
    }


def manifest_doc(
    plan: Plan, recipe: Recipe, stats: dict[str, dict[str, Any]], failed_shards: dict[str, str]
) -> dict[str, Any]:
    failures = [f for s in plan.shards if s.name in stats for f in stats[s.name]["failures"]]
    lost: list[dict[str, Any]] = [
        {"shard": s.name, "planned": len(s.entries), "error": failed_shards[s.name]}
        for s in plan.shards
        if s.name in failed_shards
    ]
    written = sum(v["written"] for v in stats.values())
    kinds: Counter[str] = Counter()
    for v in stats.values():
        kinds.update(v.get("source_kinds", {}))
    failed = len(failures) + sum(x["planned"] for x in lost)
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "recipe": to_dict(recipe),
        "recipe_fingerprint": plan.recipe_fingerprint,
        "source": {
            "path": plan.source,
            "fingerprint": plan.source_fingerprint,
            "split": plan.split,
            "num_inputs": plan.num_inputs,
            "layout": "class_folders" if plan.classes else "flat_or_nested",
        },
        "classes": list(plan.classes) if plan.classes is not None else None,
        "packages": {p: _version(p) for p in _PACKAGES},
        "labelers": [s.to_dict() for s in recipe.labelers],
        "modalities": {s.modality: _modality(s) for s in recipe.labelers},
        "members": [CODECS["rgb"].suffix]
        + [CODECS[s.modality].suffix for s in recipe.labelers]
        + [CODECS["json"].suffix]
        + ([CODECS["cls"].suffix] if plan.classes else []),
        "meaningless_labels": any(s.meaningless for s in recipe.labelers),
        "totals": {
            "inputs": plan.num_inputs,
            "written": written,
            "failed": failed,
            "shards": len(plan.shards),
            "shards_complete": len(stats),
            "shards_failed": len(lost),
            "source_kinds": dict(sorted(kinds.items())),
            "rgb_reencoded": sum(v.get("rgb_reencoded", 0) for v in stats.values()),
        },
        "failures": failures,
        "failed_shards": lost,
        "complete": not lost and len(stats) == len(plan.shards),
    }


def write_dataset_files(
    out: Path, plan: Plan, recipe: Recipe, stats: dict[str, dict[str, Any]], failed_shards: dict[str, str]
) -> dict[str, Any]:
    index = index_doc(plan, stats)
    fs.write_json_atomic(out / "index.json", index)
    fs.write_json_atomic(out / WIDS_INDEX, wids_doc(index, f"{recipe.name}-{plan.split}"))
    manifest = manifest_doc(plan, recipe, stats, failed_shards)
    fs.write_json_atomic(out / "manifest.json", manifest)
    return manifest
