"""Generated datasets with exact labels, for proof of learning, tests and benchmarks.

`scenes` renders 3-D scenes (pybullet's CPU renderer) into the task-folder layout the `files` labeler reads:
RGB, metric depth, classes by shape, normals. `rectangles` writes small aligned datasets straight through the
builder's own shard path, for tests.
"""
