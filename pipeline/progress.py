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
        self._bar.set_postfix_str(
            f"shards {self.shards_done}/{self.shards_total}, failed {self.failures}", refresh=True
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

    def shard_done(self, name: str, written: int, failed_images: int) -> None:
        self.shards_done += 1
        self.failures += failed_images
        self._refresh()
        self._log(f"shard {name}: {written} written, {failed_images} failed")

    def shard_failed(self, name: str, planned: int) -> None:
        self.images(planned)  # processed, and all failed
        self.failures += planned
        self._refresh()
        self._log(f"shard {name} FAILED ({planned} images)")

    def close(self) -> None:
        self._bar.close()
