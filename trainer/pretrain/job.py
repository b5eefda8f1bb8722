"""Pretraining as a job of the shared loop (`trainer.engine.loop.run`): MultiMAE, its masked losses computed in the
objective's forward, the shard stream of its modalities, reconstruction figures, and the timm export."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from trainer.config import PretrainConfig
from trainer.data.dataset import DatasetInfo, check_manifest, manifest_classes
from trainer.data.loader import EpochPlan, ShardStream, augment_on_device
from trainer.engine.run import RunView
from trainer.model.modalities import used_modalities
from trainer.model.multimae import MultiMAE
from trainer.transfer.export import export_timm


class PretrainObjective(nn.Module):
    """batch -> (sum of the masked losses, {task: loss}); masks drawn inside (Dirichlet budgets)."""

    def __init__(self, model: MultiMAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        preds, masks = self.model({name: batch[name] for name in self.model.cfg.inputs})
        return self.model.forward_loss(preds, batch, masks)


@dataclasses.dataclass
class PretrainJob:
    figure_inputs: dict[str, Tensor] | None = None  # the figure's sample and masks, drawn once
    figure_palette: list[int] | None = None

    def check(self, info: DatasetInfo, cfg: PretrainConfig) -> PretrainConfig:
        """The dataset has what the model reads; `model.num_classes = 0` takes the manifest's class count."""
        if cfg.model.num_classes == 0:
            model = dataclasses.replace(cfg.model, num_classes=manifest_classes(info, cfg.model))
            cfg = dataclasses.replace(cfg, model=model)
        check_manifest(info, cfg.model)
        return cfg

    def build_model(self, cfg: PretrainConfig, info: DatasetInfo) -> nn.Module:
        return MultiMAE(cfg.model)

    def param_groups(self, model: nn.Module, cfg: PretrainConfig) -> list[dict] | None:
        return None  # decay / no decay (trainer.engine.optim.param_groups)

    def objective(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, MultiMAE)
        return PretrainObjective(model)

    def task_names(self, model: nn.Module) -> list[str]:
        return list(model.output_adapters)  # type: ignore[arg-type]

    def stream(self, t: RunView[PretrainConfig], plan: EpochPlan, rotation: int) -> ShardStream:
        c = t.cfg
        return ShardStream(
            info=t.info,
            data=c.data,
            model=c.model,
            plan=plan,
            cursors=t.state.cursors,
            rotation=rotation,
            on_device=augment_on_device(c.data, t.dist.device, used_modalities(c.model)),
        )

    def describe(self, t: RunView[PretrainConfig]) -> str:
        m = t.cfg.model
        params = sum(p.numel() for p in t.model.parameters())
        return (
            f"MultiMAE {m.dim}-dim x {m.depth} blocks, {params / 1e6:.2f} M parameters; inputs {', '.join(m.inputs)}"
            f" -> outputs {', '.join(m.outputs)}; {m.num_visible} of {m.num_tokens} tokens visible"
        )

    def on_step(self, t: RunView[PretrainConfig]) -> None:
        every = t.cfg.train.figure_every
        if every and (t.state.step % every == 0 or t.state.step == t.schedule.total_steps):
            self.write_figure(t)

    def finish(self, t: RunView[PretrainConfig]) -> Path | None:
        if not t.dist.is_main:
            return None
        return export_timm(t.model.state_dict(), t.run_dir / "encoder-timm.safetensors")

    def write_figure(self, t: RunView[PretrainConfig]) -> None:
        """The reconstruction figure of the dataset's first sample, same masks every time (rank 0)."""
        if not t.dist.is_main or t.log is None:
            return
        from trainer.pretrain.reconstruct import as_image, figure_png, first_sample

        assert isinstance(t.model, MultiMAE)
        if self.figure_inputs is None:
            self.figure_inputs, self.figure_palette = first_sample(t.info, t.cfg.model)
        png = figure_png(t.model, self.figure_inputs, t.cfg.train.seed, self.figure_palette)
        t.log.figure(t.state.step, png, as_image(png))
