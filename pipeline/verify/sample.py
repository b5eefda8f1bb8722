"""Deep checks of one sample: every member decodes with the codec table, label maps have the contract's
pixel format, geometry and value range, and the sample json has its fields with the right types."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.format.codecs import BY_SUFFIX, CODECS, IGNORE_ID, Codec, class_ids_problem, decode_member

RGB, JSON, CLS = CODECS["rgb"].suffix, CODECS["json"].suffix, CODECS["cls"].suffix
_IMAGE_SUFFIXES = (".png", ".jpg")
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "source": (str,),
    "source_sha256": (str,),
    "source_format": (str,),
    "source_mode": (str,),
    "orig_size": (dict,),
    "size": (dict,),
    "rgb": (str,),
    "class": (str, type(None)),
    "labelers": (dict,),
}
_ENCODING_TYPES: dict[str, tuple[type, ...]] = {"kind": (str,), "scale": (int, float), "offset": (int, float)}


@dataclass(frozen=True, kw_only=True)
class Defect:
    """One thing wrong with a dataset; `kind` is a stable identifier, `reason` says it for a person."""

    kind: str
    reason: str
    shard: str | None = None
    key: str | None = None
    member: str | None = None  # member suffix ("depth.png"), or a file name for dataset-level files


@dataclass(frozen=True, kw_only=True)
class MapSpec:
    """One label map of the dataset (from manifest.json 'modalities'); its checks come from its codec."""

    modality: str
    member: str
    num_classes: int | None = None  # class maps: ids must be < num_classes or the ignore id
    ignore_id: int = IGNORE_ID

    @property
    def codec(self) -> Codec:
        return CODECS[BY_SUFFIX[self.member]]


@dataclass
class _Sample:
    key: str
    shard: str
    defects: list[Defect]

    def add(self, kind: str, member: str | None, reason: str) -> None:
        self.defects.append(Defect(kind=kind, reason=reason, shard=self.shard, key=self.key, member=member))


def _decode(sample: _Sample, suffix: str, data: bytes) -> Any:
    try:
        return decode_member(suffix, data)
    except ValueError as err:
        kind = "wrong_pixel_format" if suffix.endswith(_IMAGE_SUFFIXES) else "undecodable"
        sample.add(kind, suffix, str(err))
    except Exception as err:  # corrupt bytes: Pillow raises OSError, DecompressionBombError, ...
        sample.add("undecodable", suffix, f"{type(err).__name__}: {err}")
    return None


def _check_rgb(sample: _Sample, rgb: Any) -> tuple[int, int] | None:
    if rgb is None:
        return None
    problem = CODECS["rgb"].problem(rgb)
    if problem:
        sample.add("wrong_pixel_format", RGB, f"rgb {problem}")
    return int(rgb.shape[0]), int(rgb.shape[1])


def _class_ids(sample: _Sample, arr: np.ndarray, spec: MapSpec) -> None:
    assert spec.num_classes is not None
    reason = class_ids_problem(arr, spec.num_classes, spec.ignore_id)
    if reason:
        sample.add("class_id_out_of_range", spec.member, reason)


def _check_map(sample: _Sample, arr: Any, spec: MapSpec, rgb_hw: tuple[int, int] | None) -> None:
    if arr is None:
        return
    problem = spec.codec.problem(arr)
    if problem:
        sample.add("wrong_pixel_format", spec.member, f"{spec.modality} {problem}")
        return
    if rgb_hw is not None and arr.shape[:2] != rgb_hw:
        reason = f"{spec.modality} is {arr.shape[1]}x{arr.shape[0]} (WxH), rgb is {rgb_hw[1]}x{rgb_hw[0]}"
        sample.add("size_mismatch", spec.member, reason)
    if spec.codec.kind == "class_map" and spec.num_classes is not None:
        _class_ids(sample, arr, spec)
    if spec.codec.check is not None:
        bad = spec.codec.check(arr)
        if bad:
            sample.add("bad_values", spec.member, f"{spec.modality}: {bad}")


def _is_size(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(k), int) and not isinstance(value.get(k), bool) and value[k] > 0
        for k in ("width", "height")
    )


def _typed(value: dict[str, Any], types: dict[str, tuple[type, ...]]) -> list[str]:
    wrong = []
    for name, allowed in types.items():
        if name not in value:
            wrong.append(f"'{name}' missing")
        elif not isinstance(value[name], allowed) or (isinstance(value[name], bool) and bool not in allowed):
            wrong.append(f"'{name}' is {type(value[name]).__name__}, not {'/'.join(t.__name__ for t in allowed)}")
    return wrong


def _json_problems(meta: dict[str, Any], key: str, maps: tuple[MapSpec, ...]) -> list[str]:
    wrong = _typed(meta, _JSON_TYPES)
    for name in ("orig_size", "size"):
        if name in meta and not _is_size(meta[name]):
            wrong.append(f"'{name}' is not a {{width, height}} of positive ints")
    if isinstance(meta.get("key"), str) and meta["key"] != key:
        wrong.append(f"'key' is {meta['key']!r}, the member key is {key!r}")
    for spec in maps:
        if spec.codec.per_sample_encoding:
            enc = meta.get(spec.modality)
            found = _typed(enc, _ENCODING_TYPES) if isinstance(enc, dict) else ["missing or not an object"]
            wrong += [f"'{spec.modality}' encoding: {w}" for w in found]
    return wrong


def _check_json(sample: _Sample, meta: Any, maps: tuple[MapSpec, ...], rgb_hw: tuple[int, int] | None) -> None:
    if meta is None:
        return
    for problem in _json_problems(meta, sample.key, maps):
        sample.add("bad_json", JSON, problem)
    size = meta.get("size")
    if rgb_hw is not None and _is_size(size) and (size["height"], size["width"]) != rgb_hw:
        reason = f"json size is {size['width']}x{size['height']}, rgb is {rgb_hw[1]}x{rgb_hw[0]}"
        sample.add("size_mismatch", JSON, reason)


def _check_original(sample: _Sample, rgb: bytes | None, meta: Any) -> None:
    """rgb.jpg stored as the source's own bytes must hash to the source sha256 the json records."""
    if rgb is None or not isinstance(meta, dict) or meta.get("rgb") != "original":
        return
    if hashlib.sha256(rgb).hexdigest() != meta.get("source_sha256"):
        sample.add("rgb_not_source", RGB, "rgb.jpg is said to be the source's bytes but does not hash to source_sha256")


def _check_cls(sample: _Sample, cls: Any, meta: Any, classes: tuple[str, ...] | None) -> None:
    if cls is None or classes is None:
        return
    if not 0 <= cls < len(classes):
        sample.add("bad_class", CLS, f"class index {cls} outside 0..{len(classes) - 1}")
    elif isinstance(meta, dict) and meta.get("class") != classes[cls]:
        sample.add("bad_class", CLS, f"class index {cls} is {classes[cls]!r}, the json says {meta.get('class')!r}")


def check_sample(
    key: str, members: dict[str, bytes], shard: str, maps: tuple[MapSpec, ...], classes: tuple[str, ...] | None
) -> list[Defect]:
    """Decode every member of one sample and check it against the contract; missing members are skipped
    here (the shard check reports them)."""
    sample = _Sample(key, shard, [])
    decoded = {suffix: _decode(sample, suffix, data) for suffix, data in members.items()}
    rgb_hw = _check_rgb(sample, decoded.get(RGB))
    _check_original(sample, members.get(RGB), decoded.get(JSON))
    for spec in maps:
        _check_map(sample, decoded.get(spec.member), spec, rgb_hw)
    _check_json(sample, decoded.get(JSON), maps, rgb_hw)
    _check_cls(sample, decoded.get(CLS), decoded.get(JSON), classes)
    return sample.defects
