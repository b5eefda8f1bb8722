"""The model: what every run builds on.

Reading order: `modalities` (the registry of inputs and tasks: codecs, adapters, losses) -> `layers`
(transformer blocks with the official parameter names) -> `adapters` (pixels or class maps -> tokens; the
cross-attention output adapter) -> `masking` (Dirichlet token budgets) -> `losses` (masked losses) ->
`multimae` (the pretraining model). Imports nothing of the other trainer wings.
"""
