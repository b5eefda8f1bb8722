"""The engine: one training loop for every kind of run (pretraining, fine-tuning, probing).

Reading order: `run` (the `Job` protocol, options, schedule, state, summary) -> `optim` (parameter groups, the
learning-rate schedule) -> `distributed` (torchrun process groups) -> `checkpoint` (the one checkpoint payload,
written atomically, and the one reader: a typed `Checkpoint` of any kind) -> `resume` (step-granular resume,
and what it refuses: other data, another schedule unless rescheduled) -> `logs` (progress bar, metrics.jsonl,
TensorBoard, W&B) -> `run_folder` (the run folder: owned, locked, staged for an object store) -> `stop` (SIGTERM /
SIGINT: every rank stops after one step, with its checkpoint) -> `loop` (`Trainer`: start, train, close; `run`).
"""
