"""Run logs on rank 0: a progress bar (loss, samples/s), metrics.jsonl (one record per step), figures, and
TensorBoard (scalars and figures; on by default) and Weights & Biases (optional) when asked for: the training
scalars (`loss/*`, `train/*`) every step, a fine-tuning run's validation metrics (`val/*`) at each validation."""

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
        self,
        run_dir: Path,
        *,
        enabled: bool,
        progress: bool,
        total: int,
        initial: int,
        tensorboard: bool,
        wandb: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled, self.run_dir, self.path = enabled, Path(run_dir), Path(run_dir) / "metrics.jsonl"
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and progress), dynamic_ncols=True)
        self.board = _board(run_dir) if enabled and tensorboard else None
        self.wandb = _wandb(run_dir, config or {}) if enabled and wandb else None

    def announce(self, text: str) -> None:
        """The run's short summary, once at the start (stderr); the resolved config is in config.json."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        loss = "non-finite" if record["loss"] is None else f"{record['loss']:.4f}"
        self.bar.set_postfix(loss=loss, sps=f"{record['samples_per_s']:.1f}")
        self.bar.update(1)
        scalars = _scalars(record)
        if self.board is not None:
            for key, value in scalars.items():
                self.board.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def validation(self, step: int, result: dict[str, Any]) -> None:
        """A validation's numbers as `val/<metric>` scalars beside the training curves (TensorBoard, wandb);
        the whole record is the job's (val.jsonl)."""
        if not self.enabled:
            return
        scalars = {
            f"val/{k}": float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self.board is not None:
            for key, value in scalars.items():
                self.board.add_scalar(key, value, step)
            self.board.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def figure(self, step: int, png: bytes, image: Any) -> Path | None:
        """Save a reconstruction figure as figures/step-NNNNNNN.png (and to TensorBoard / wandb)."""
        if not self.enabled:
            return None
        from pipeline.format import fs

        path = self.run_dir / "figures" / f"step-{step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        fs.write_bytes_atomic(path, png)
        if self.board is not None:
            self.board.add_image("reconstruction", image, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"reconstruction": wandb.Image(image)}, step=step)
        return path

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()
        if self.wandb is not None:
            self.wandb.finish()


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers (a non-finite loss or grad norm, null in the record, is left out)."""
    out = {f"loss/{k}": float(v) for k, v in record["losses"].items() if v is not None}
    keys = ("loss", "lr", "grad_norm", "data_wait_s", "samples_per_s")
    return out | {f"train/{k}": float(record[k]) for k in keys if record[k] is not None}


def _board(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            "train.tensorboard = true needs the tensorboard package (pip install tensorboard), or pass --no-tensorboard"
        ) from exc
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


def _wandb(run_dir: Path, config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError("train.wandb = true needs the wandb package (pip install 'multimae-forge[wandb]')") from exc
    return wandb.init(project="multimae-forge", name=Path(run_dir).name, dir=str(run_dir), config=config)
