"""MultiMAE pretraining from multimae-forge shards.

Reading order: `config` (typed configs, TOML) -> `modalities` (the registry the rest reads) -> `layers`,
`adapters`, `masking`, `losses`, `model` (MultiMAE) -> `dataset` (index + manifest), `augment`, `data`
(WebDataset loader) -> `optim`, `checkpoint`, `distributed`, `logs`, `run`, `resume`, `train` (the loop;
`torchrun -m trainer.train`) -> `export` (timm ViT). `synthetic` writes small datasets for tests and benchmarks.
"""

from trainer.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, PretrainError

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "PretrainError"]
