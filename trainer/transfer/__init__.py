"""Transfer: fine-tuning, probing, evaluation, prediction and export of a pretrained MultiMAE.

Reading order: `config` (typed fine-tuning recipes) -> `rules` (the built-in tasks' rules on their settings,
read by the settings checks without torch) -> `heads` (classification, probe, dense probe, ConvNeXt and
DPT heads with the official names) -> `metrics` (whole-split metrics) -> `tasks` (the transfer-task registry: each
task's target, head, loss, metrics and main metric; plugins add tasks) -> `classes` (a split's class ids mapped
onto the model's by name) -> `model` (the pretraining encoder,
`trainer.model.encoder`, plus the task's head) -> `init_weights` (loading our, official or timm weights,
reporting every change) -> `protocols` (evaluation protocols: where an evaluated image lands, the official
ones by task, full image padded, sliding window) -> `finetune` (`finetune`, `probe`, `evaluate`) -> `predict` (a
fine-tuned model on new images or a dataset's shards, each prediction at the image's own size) -> `export` (timm
and the official layout).
"""
