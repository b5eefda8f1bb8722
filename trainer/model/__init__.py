"""The model: what every run builds on.

Reading order: `builtins` (the built-in modalities and tasks as the settings checks read them, without torch)
-> `modalities` (the registry of inputs and tasks: codecs, adapters, losses) -> `layers`
(transformer blocks with the official parameter names) -> `adapters` (pixels or class maps -> tokens; the
cross-attention output adapter) -> `encoder` (global tokens, input adapters and blocks: the one encoder of the
pretraining and the fine-tuning model) -> `masking` (Dirichlet token budgets) -> `losses` (masked losses) ->
`multimae` (the pretraining model: the encoder plus decoders). Imports nothing of the other trainer wings.
"""
