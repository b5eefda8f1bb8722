"""The engine: one training loop for every kind of run (pretraining, fine-tuning, probing).

Reading order: `run` (the `Job` protocol, options, schedule, state, summary) -> `optim` (parameter groups, the
learning-rate schedule) -> `distributed` (torchrun process groups) -> `checkpoint` (atomic plain-dict
checkpoints) -> `resume` (step-granular resume) -> `logs` (progress bar, metrics.jsonl, TensorBoard, W&B) ->
`run_folder` (a run on an object store) -> `loop` (`Trainer`: start, train, close).
"""
