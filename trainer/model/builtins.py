"""The built-in modalities and pretraining tasks as the settings checks read them, without the registry.

`trainer.model.modalities` holds each entry's torch code (adapters, losses), so importing it takes over a
second; a config is checked before that (`trainer.config.modality_strides`, `task_sources`) against these,
unless a plugin extends the registry (its entry-point group, `GROUP`) or the registry is already imported.
`tests/test_settings_bounds.py` pins them to the registry's own entries.
"""

from __future__ import annotations

GROUP = "multimae_forge.modalities"  # the entry-point group of modality and pretraining-task plugins
REGISTRY = "trainer.model.modalities"
STRIDES = {"rgb": 1, "depth": 1, "semseg": 4, "normal": 1}  # modality -> stride (1: full resolution)
SOURCES = {"rgb": "rgb", "depth": "depth", "semseg": "semseg", "norm_rgb": "rgb", "normal": "normal"}  # task -> source
