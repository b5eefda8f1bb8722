"""Loading plugins: the modules a user's package names under multimae-forge's entry-point groups
(`multimae_forge.codecs`, `multimae_forge.labelers`, `multimae_forge.modalities`,
`multimae_forge.transfer_tasks`); importing one registers its entries. Here, at the bottom of the import graph,
so the codec table, the labeler registry and the trainer's modality and transfer-task registries load them the
same way.

A plugin that fails to load (raises at import, registers a name that is taken) is left out and named: one
warning line when its group loads, and `unavailable(group)` for the error of a command that asks for a name
it would have registered. Left out wholly: what its import registered before it raised is taken back from every
registry table (`registry`), so no half of a plugin stays usable. The built-in entries and the other plugins
still work, so a broken labeler or codec plugin never stops `verify` of a dataset that does not use it."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, TypeVar

log = logging.getLogger(__name__)
FAILED: dict[str, list[str]] = {}  # group -> one line per entry point of it that failed to load
_TABLES: list[dict[Any, Any]] = []  # every registry table a plugin's import can fill (`registry`)
T = TypeVar("T", bound=dict)


def registry(table: T) -> T:
    """Enrol a registry table (name -> entry) that plugins fill at import; returns it. A plugin that raises
    while loading has its entries taken back from every enrolled table."""
    _TABLES.append(table)
    return table


class PluginError(RuntimeError):
    """An entry point of a multimae-forge plugin group failed to load (named in the message)."""


def load_entry_points(group: str) -> list[PluginError]:
    """Import every module named under `group`; returns (and warns of) the ones that failed, each named with
    its entry point and package."""
    failed = []
    for ep in entry_points(group=group):
        before = [dict(table) for table in _TABLES]
        try:
            ep.load()
        except Exception as err:  # a plugin's import runs its code: anything it raises is its failure
            for table, kept in zip(_TABLES, before, strict=False):  # (a table first enrolled by this load: kept)
                table.clear()
                table.update(kept)
            dist = ep.dist.name if ep.dist is not None else "?"
            failed.append(
                PluginError(
                    f"plugin entry point {ep.name} = {ep.value} (group {group}, package {dist}) failed to load: "
                    f"{type(err).__name__}: {err}"
                )
            )
    FAILED[group] = [str(failure) for failure in failed]
    for failure in failed:
        log.warning("warning: %s; left out", failure)
    return failed


def extends(group: str) -> bool:
    """Whether any installed package names a plugin under `group` (read from the packages' metadata; nothing
    is imported): a registry with none holds its built-in entries only."""
    return any(True for _ in entry_points(group=group))


def unavailable(group: str) -> str:
    """'' or a note for an unknown-name error: the plugins of `group` that failed to load."""
    failed = FAILED.get(group, [])
    return f" ({'; '.join(failed)})" if failed else ""
