"""Loading plugins: the modules a user's package names under multimae-forge's entry-point groups
(`multimae_forge.codecs`, `multimae_forge.labelers`, `multimae_forge.modalities`,
`multimae_forge.transfer_tasks`); importing one registers its entries. Here, at the bottom of the import graph,
so the codec table, the labeler registry and the trainer's modality and transfer-task registries load them the
same way."""

from __future__ import annotations

from importlib.metadata import entry_points


class PluginError(RuntimeError):
    """An entry point of a multimae-forge plugin group failed to load (named in the message)."""


def load_entry_points(group: str) -> None:
    """Import every module named under `group`; a failure names the entry point and its package."""
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as err:
            dist = ep.dist.name if ep.dist is not None else "?"
            raise PluginError(
                f"plugin entry point {ep.name} = {ep.value} (group {group}, package {dist}) failed to load: "
                f"{type(err).__name__}: {err}"
            ) from err
