"""Run logs on rank 0: a progress bar (loss, samples/s), metrics.jsonl (one record per step), TensorBoard."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer.errors import ConfigError


class RunLog:
    """Writes nothing on ranks other than 0 (`enabled=False`)."""

    def __init__(
        self, run_dir: Path, *, enabled: bool, progress: bool, total: int, initial: int, tensorboard: bool
    ) -> None:
        self.enabled, self.path = enabled, Path(run_dir) / "metrics.jsonl"
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and progress), dynamic_ncols=True)
        self.board = _board(run_dir) if enabled and tensorboard else None

    def announce(self, resolved: dict[str, Any]) -> None:
        """Print the resolved config once at the start (stderr)."""
        if self.enabled:
            print(f"resolved config: {json.dumps(resolved)}", file=sys.stderr)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
        self.bar.update(1)
        if self.board is not None:
            for key, value in _scalars(record).items():
                self.board.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    out = {f"loss/{k}": float(v) for k, v in record["losses"].items()}
    keys = ("loss", "lr", "grad_norm", "data_wait_s", "samples_per_s")
    return out | {f"train/{k}": float(record[k]) for k in keys}


def _board(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("train.tensorboard = true needs the tensorboard package (pip install tensorboard)") from exc
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
