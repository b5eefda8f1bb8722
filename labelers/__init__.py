"""Pseudo-labelers behind one small interface and a registry (see `labelers.registry`)."""

from labelers.registry import available, build_labeler, check_labeler, register_labeler, resolve_spec
from labelers.spec import Labeler, LabelerSpec

__all__ = [
    "Labeler",
    "LabelerSpec",
    "available",
    "build_labeler",
    "check_labeler",
    "register_labeler",
    "resolve_spec",
]
