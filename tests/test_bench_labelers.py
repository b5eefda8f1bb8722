"""The labeler benchmark's core runs (smoke labelers, 2 small images), so the script cannot rot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.bench_labelers import IMAGENET_TRAIN, bench_labeler, estimates, imagenet_like, load_labeler


def test_bench_labelers_smoke(tmp_path: Path) -> None:
    images = imagenet_like(2, [(75, 100), (100, 75)])
    assert [im.shape for im in images] == [(75, 100, 3), (100, 75, 3)]
    results = []
    for name in ("dpt-smoke", "mask2former-smoke"):
        labeler = load_labeler(name, tmp_path, "cpu", "fp32")
        result = bench_labeler(labeler, images, device="cpu", precision="fp32", batch_size=2, repeats=1)
        row = json.loads(json.dumps(asdict(result)))
        assert row["name"] == name and row["device"] == "cpu" and row["precision"] == "fp32"
        assert row["batch"] == 2 and row["images"] == 2 and len(row["img_s_runs"]) == 1
        assert row["image_sizes"] == ["100x75", "75x100"]
        assert row["input_sizes"] == ["96x64", "64x96"]  # short side 64, multiples of 32
        assert row["img_s"] > 0 and row["weights"]
        results.append(result)
    [est] = estimates(results, devices=8)
    assert est["depth"] == "dpt-smoke" and est["semseg"] == "mask2former-smoke"
    per_device = 1 / (1 / results[0].img_s + 1 / results[1].img_s)
    assert abs(est["per_device_img_s"] - per_device) <= 1e-3 * per_device
    assert abs(est["hours"] - round(IMAGENET_TRAIN / (8 * per_device) / 3600, 2)) < 1e-6
