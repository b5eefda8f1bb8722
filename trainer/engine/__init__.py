"""The engine: one training loop for every kind of run (pretraining, fine-tuning, probing).

Reading order: `run` (the `Job` protocol, options, schedule, state, summary) -> `optim` (parameter groups, the
learning-rate schedule) -> `distributed` (torchrun process groups) -> `checkpoint` (the one checkpoint payload,
written atomically, and the one reader: a typed `Checkpoint` of any kind) -> `resume` (step-granular resume) ->
`logs` (progress bar, metrics.jsonl, TensorBoard, W&B) -> `run_folder` (a run on an object store) -> `loop`
(`Trainer`: start, train, close).
"""
