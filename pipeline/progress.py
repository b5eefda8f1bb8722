"""One live progress bar for a build: images (with images/s and ETA), shards done, failures."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class BuildProgress:
    def __init__(
        self, *, images: int, shards: int, done_images: int = 0, done_shards: int = 0, quiet: bool = False
    ) -> None:
        self.shards_total, self.shards_done, self.failures = shards, done_shards, 0
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

    def images(self, n: int) -> None:
        self._bar.update(n)

    def shard_done(self, failed_images: int) -> None:
        self.shards_done += 1
        self.failures += failed_images
        self._refresh()

    def shard_failed(self, planned: int) -> None:
        self.failures += planned
        self._refresh()

    def close(self) -> None:
        self._bar.close()
