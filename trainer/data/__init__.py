"""Data: from a dataset folder to training batches.

Reading order: `dataset` (the folder's documents, checked before training) -> `augment` (one crop and one
flip shared by every modality) -> `batch_resize` (the same resampling for a whole batch, on the device) ->
`loader` (the streaming WebDataset loader: shards, cursors for resume, workers).
"""
