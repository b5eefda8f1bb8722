"""A run folder on an object store (`--out s3://bucket/runs/name`): a local stage, published to the store.

The trainer writes its run folder exactly as on a local disk, into a stage folder of this rank
(`$MMFORGE_CACHE/stage/runs/...`). Rank 0 publishes it after every checkpoint and at the end: each changed
file is one upload (all or nothing: no partial checkpoint is ever visible), numbered checkpoints before
the other files, and `checkpoint-last.pt` last, so the last always names a complete checkpoint whose metrics
are already there; numbered checkpoints past `keep_last` are removed from the store. Resuming, every rank
first copies the last (and best) checkpoint, the metrics, the validation log and `config.json` from the store
into its own fresh stage, so all ranks read the same checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline.format import stores
from trainer.engine.checkpoint import LAST

_NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")
_PULLED = (LAST, "metrics.jsonl", "config.json", "val.jsonl", "checkpoint-best.pt")  # what a resumed run reads


class StoreRunFolder:
    """The stage of one rank and the store prefix it is published to."""

    def __init__(self, url: str, rank: int) -> None:
        self.store = stores.open_store(url)
        self.local = stores.stage_dir(self.store.url, "runs") / f"rank-{rank}"
        self._sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) as last published

    def pull(self) -> None:
        """A fresh stage holding the store's last checkpoint, metrics and config (those that exist)."""
        if self.local.exists():
            shutil.rmtree(self.local)
        self.local.mkdir(parents=True)
        listing = self.store.listing()
        for rel in _PULLED:
            if rel in listing:
                self.store.get_file(rel, self.local / rel)
                self._sent[rel] = _signature(self.local / rel)

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
                self.store.put_file(path, rel)
                self._sent[rel] = signature
        numbered = sorted(
            (int(m[1]), rel) for rel in self.store.listing() if "/" not in rel and (m := _NUMBERED.fullmatch(rel))
        )
        self.store.remove([rel for _, rel in numbered[: max(0, len(numbered) - keep_last)]])


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
