"""Progress of a build: a live bar (images with images/s and ETA, shards done, failures), or with `quiet`
one log line per finished shard, for log files."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class BuildProgress:
    def __init__(
        self, *, images: int, shards: int, done_images: int = 0, done_shards: int = 0, quiet: bool = False
    ) -> None:
        self.shards_total, self.shards_done, self.failures = shards, done_shards, 0
        self.images_total, self.images_done, self.quiet = images, done_images, quiet
        self._started, self._start_images = time.monotonic(), done_images
        self.nodes: dict[str, tuple[int, float]] = {}  # node -> (images, task seconds) this run
        self._bar: Any = tqdm(
            total=images,
            initial=done_images,
            unit="img",
            dynamic_ncols=True,
            disable=quiet,
            file=sys.stderr,
            smoothing=0.1,
        )
        self._refresh()

    def _refresh(self) -> None:
        nodes = f", nodes {len(self.nodes)}" if len(self.nodes) > 1 else ""
        self._bar.set_postfix_str(
            f"shards {self.shards_done}/{self.shards_total}, failed {self.failures}{nodes}", refresh=True
        )

    def _log(self, what: str) -> None:
        if not self.quiet:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (self.images_done - self._start_images) / elapsed
        print(
            f"{what}; {self.shards_done}/{self.shards_total} shards, {self.images_done}/{self.images_total} "
            f"images, {rate:.1f} img/s, {self.failures} failed",
            file=sys.stderr,
            flush=True,
        )

    def images(self, n: int) -> None:
        self.images_done += n
        self._bar.update(n)

    def shard_done(self, name: str, written: int, failed_images: int, where: str = "", seconds: float = 0.0) -> None:
        """A finished shard; `where` (node id, host) and its task's `seconds` feed the per-node rates."""
        self.shards_done += 1
        self.failures += failed_images
        made, busy = self.nodes.get(where, (0, 0.0))
        self.nodes[where] = (made + written, busy + seconds)
        self._refresh()
        rate = f", {written / seconds:.1f} img/s" if seconds > 0 else ""
        self._log(f"shard {name}: {written} written, {failed_images} failed (on {where or '?'}{rate})")
        if self.quiet and len(self.nodes) > 1 and self.shards_done % 10 == 0:
            print(f"per node: {self.node_rates()}", file=sys.stderr, flush=True)

    def node_rates(self) -> str:
        """Images and images per task-second of each node so far, one line."""
        return "; ".join(
            f"{where or '?'}: {made} img, {made / busy:.1f} img/task-s" if busy > 0 else f"{where or '?'}: {made} img"
            for where, (made, busy) in sorted(self.nodes.items())
        )

    def stalled(self, names: list[str], minutes: float) -> None:
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        tqdm.write(f"warning: no progress for {minutes:g} min in shards {listed}", file=sys.stderr)

    def shard_failed(self, name: str, planned: int) -> None:
        self.images(planned)  # processed, and all failed
        self.failures += planned
        self._refresh()
        self._log(f"shard {name} FAILED ({planned} images)")

    def close(self) -> None:
        self._bar.close()
