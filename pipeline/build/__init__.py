"""`mmforge build-dataset`: a source folder in, labelled shards out, every input accounted for.

Reading order: `recipe` (the typed recipe and run options) -> `plan` (walk the source once, freeze the shard
plan) -> `images` (read and decode one source image) -> `label_files` (ground truth from files) -> `shard`
(per-shard work: read, label in batches, encode) -> `sink` (the one way a shard reaches OUT) -> `executors`
(in-process and Ray distributors over `shard.process_shard`) -> `progress` -> `dataset_files` (index, wids
index, manifest) -> `builder` (the command: plan or resume, run, finish).
"""
