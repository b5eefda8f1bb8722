"""The dataset half of multimae-forge: from a folder of RGB images to verified WebDataset shards.

Wings, read in this order (arrows run one way: labelers <- format <- build, verify, pictures, synth <- cli):
- `format`: the data contract: schema (typed configs from TOML/JSON), fs and stores (local folders and object
  stores behind one location), codecs (one table for every sample member), contract (the dataset's paths and
  documents), ownership (which files of a folder are ours), wds (readers for other libraries).
- `build`: `build-dataset`: the recipe, the frozen plan, the per-shard work (read, label, encode, sink), the
  distributors (in-process, Ray) and the documents written at the end.
- `verify`: `verify`: documents, then every shard and sample, against the contract.
- `pictures`: `preview` and the figures shared with the trainer.
- `synth`: generated datasets with exact labels (rendered scenes, rectangles) for tests and benchmarks.
- `cli`: the thin `mmforge` Typer app, the only module that sees every wing and the trainer.
"""
