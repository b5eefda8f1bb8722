"""Transfer: fine-tuning, probing, evaluation and export of a pretrained MultiMAE.

Reading order: `config` (typed fine-tuning recipes) -> `heads` (classification, ConvNeXt and DPT heads with the
official names) -> `model` (the pretraining encoder, `trainer.model.encoder`, plus one head) -> `init_weights`
(loading our, official or timm weights, reporting every change) -> `metrics` (whole-split metrics) ->
`finetune` (`finetune`, `probe`, `evaluate`) -> `export` (timm and the official layout).
"""
