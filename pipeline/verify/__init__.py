"""`mmforge verify`: prove a dataset is complete, intact and true to the data contract.

Reading order: `docs` (read every document through the contract, cross-check them; also the dataset opener
the trainer and the pictures use) -> `tar` (a strict streaming tar reader) -> `sample` (deep checks of one
sample with the codec table) -> `shard` (one shard in a worker) -> `verifier` (the command: counts,
checksums, modalities, alignment; the report).
"""
