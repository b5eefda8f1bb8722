"""The run folder after a resume: metrics of steps about to be redone are dropped."""

import json

from trainer.engine.loop import trim_metrics


def test_trim_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)))
    trim_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    trim_metrics(tmp_path / "absent.jsonl", 4)  # nothing to trim is fine
