"""MultiMAE pretraining and transfer from multimae-forge shards.

Wings, read in this order (arrows run one way: model <- data <- engine <- pretrain, transfer):
- `config` (the typed configs of pretraining and fine-tuning runs, and `load_run_config`, their one loader with
  the command line's overrides), `options` (the command-line options of every run that trains, declared once)
  and `errors` (the trainer's user errors), shared by all.
- `model`: the modality registry (`modalities`), transformer `layers`, input/output `adapters`, the shared
  `encoder`, `masking`, `losses`, and MultiMAE itself (`multimae`).
- `data`: the dataset folder checked before training (`dataset`), the shared augmentation (`augment`,
  `batch_resize` on the device) and the streaming WebDataset `loader`.
- `engine`: the one training loop (`loop`) and what a run is made of: `run` (job protocol, options,
  schedule), `optim`, `checkpoint` (the one payload written and the one reader of every kind), `resume`,
  `distributed`, `logs`, `run_folder` (runs on object stores).
- `pretrain`: the pretraining `job` and `reconstruct` (what a checkpoint predicts from a masked input).
- `transfer`: fine-tuning and probing (`config`, `model`, `heads`, `metrics`, `init_weights`, `finetune`)
  and `export` (timm and the official layout).
`train` is the torchrun entry point (`torchrun -m trainer.train`, or `python -m trainer`).
"""

from trainer.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, PretrainError

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "PretrainError"]
