"""Labeler registry: name -> (spec, factory). Filled by decorators at import, and by entry points.

A package of your own adds a labeler without editing this one: expose a module under the entry-point group
`multimae_forge.labelers` whose import registers its entries with `@register_labeler(spec)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

from labelers import builtin
from labelers.plugins import extends, load_entry_points, registry, unavailable
from labelers.spec import Labeler, LabelerSpec
from labelers.weights import check_weights

Factory = Callable[..., Labeler]
Check = Callable[[LabelerSpec], None]
ENTRY_POINT_GROUP = "multimae_forge.labelers"
_BUILTIN_MODULES = ("labelers.dpt", "labelers.mask2former", "labelers.omnidata", "labelers.teacher")
_REGISTRY: dict[str, tuple[LabelerSpec, Factory]] = registry({})
_CHECKS: dict[str, Check] = registry({})
_loaded = False


class UnknownLabelerError(KeyError):
    pass


def register_labeler(spec: LabelerSpec, check: Check | None = None) -> Callable[[Factory], Factory]:
    """Decorator: register `factory(spec, device=..., precision=...) -> Labeler` under `spec.name`.

    `check(spec)` raises WeightsUnavailableError at once when the weights cannot be loaded here; the
    default treats `spec.weights` as a transformers folder or hub id.
    """
    if check is not None:
        _CHECKS[spec.name] = check

    def wrap(factory: Factory) -> Factory:
        if spec.name in _REGISTRY and _REGISTRY[spec.name][1] is not factory:
            raise ValueError(f"labeler {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = (spec, factory)
        return factory

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        import_module(module)
    load_entry_points(ENTRY_POINT_GROUP)


def available() -> list[str]:
    if extends(ENTRY_POINT_GROUP):
        _load_all()
    return sorted({*builtin.SPECS, *_REGISTRY})


def resolve_spec(name: str, overrides: Mapping[str, Any] | None = None) -> LabelerSpec:
    """The registered spec of `name` with recipe overrides applied; unknown names or fields are errors. A
    built-in name's spec is read from `labelers.builtin` (its network's module, and torch, are not imported);
    any other name loads the plugins."""
    if name not in builtin.SPECS and name not in _REGISTRY and extends(ENTRY_POINT_GROUP):
        _load_all()
    spec = builtin.SPECS.get(name) or (_REGISTRY[name][0] if name in _REGISTRY else None)
    if spec is None:
        raise UnknownLabelerError(
            f"unknown labeler {name!r}; available: {', '.join(available())}{unavailable(ENTRY_POINT_GROUP)}"
        )
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(LabelerSpec)} - {"name", "modality", "output", "model_class"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"labeler {name!r}: unknown setting(s) {unknown}; allowed: {sorted(fields)}")
    for key in ("mean", "std"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return dataclasses.replace(spec, **overrides)


def build_labeler(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> Labeler:
    """Instantiate (load weights of) the labeler that `spec` describes."""
    _load_all()
    if spec.name not in _REGISTRY:
        raise UnknownLabelerError(f"unknown labeler {spec.name!r}{unavailable(ENTRY_POINT_GROUP)}")
    return _REGISTRY[spec.name][1](spec, device=device, precision=precision)


def check_labeler(spec: LabelerSpec) -> None:
    """Raise WeightsUnavailableError (within seconds) if `spec`'s weights cannot be loaded on this machine."""
    _load_all()
    if spec.name in _CHECKS:
        _CHECKS[spec.name](spec)
    elif spec.weights:
        check_weights(spec.weights, spec.revision)
