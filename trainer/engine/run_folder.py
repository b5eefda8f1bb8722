"""The run folder as a stage (`Location.stage`): written like a local disk, published to where `--out` is.

A local `--out` is its own stage: written in place, nothing to copy or upload. A run folder on an object store
(`--out s3://bucket/runs/name`) is written into a stage folder of this rank (`$MMFORGE_CACHE/stage/runs/...`).
Rank 0 publishes it after every checkpoint and at the end: each changed file is one upload (all or nothing: no
partial checkpoint is ever visible), numbered checkpoints before the other files, and `checkpoint-last.pt`
last, so the last always names a complete checkpoint whose metrics are already there; numbered checkpoints past
`keep_last` are removed from the store. Resuming, every rank first copies the last (and best) checkpoint, the
metrics, the validation log and `config.json` from the store into its own fresh stage, so all ranks read the
same checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.format.stores import Location, Stage
from trainer.engine.checkpoint import LAST

_NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")
_PULLED = (LAST, "metrics.jsonl", "config.json", "val.jsonl", "checkpoint-best.pt")  # what a resumed run reads


class RunFolder:
    """The stage of one rank and where it is published to (`published_to`: "" for a local run folder)."""

    def __init__(self, out: Location, rank: int) -> None:
        self.stage: Stage = out.stage("runs", f"rank-{rank}")
        self.local = self.stage.root
        self.published_to = self.stage.published_to
        self._sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) as last published

    def pull(self) -> None:
        """A fresh stage holding the store's last checkpoint, metrics and config (those that exist)."""
        listing = self.stage.listing()
        self.stage.fetch(lambda rel: rel in _PULLED, listing)
        self._sent = {rel: _signature(self.local / rel) for rel in _PULLED if rel in listing}

    def publish(self, keep_last: int) -> None:
        """Upload what changed since the last call (numbered checkpoints, then the last one, then the rest),
        then remove numbered checkpoints past `keep_last` from the store."""
        files = sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith("."))
        # numbered checkpoints, then everything else, and checkpoint-last.pt last: when it names step S, the
        # store already holds the metrics and files of step S
        files.sort(key=lambda p: (0 if _NUMBERED.fullmatch(p.name) else 2 if p.name == LAST else 1, str(p)))
        for path in files:
            rel = path.relative_to(self.local).as_posix()
            signature = _signature(path)
            if self._sent.get(rel) != signature:
                self.stage.publish(path)
                self._sent[rel] = signature
        numbered = sorted(
            (int(m[1]), rel) for rel in self.stage.listing() if "/" not in rel and (m := _NUMBERED.fullmatch(rel))
        )
        self.stage.remove([rel for _, rel in numbered[: max(0, len(numbered) - keep_last)]])


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
