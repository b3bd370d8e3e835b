"""cluster/: every launcher YAML passes Ray's own config validation; every KubeRay manifest has what KubeRay needs.

Nothing here contacts a cloud or a Kubernetes cluster.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
CLOUD_YAMLS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# -----------------------------------------------------------------------------
# Ray cluster launcher YAMLs


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_cloud_yaml_passes_rays_validation(name):
    # What `ray up` does before it talks to the cloud (commands._bootstrap_config): merge the
    # provider's defaults, then check the result against ray-schema.json and Ray's own rules.
    validate_config(prepare_config(load(name)))


def test_fake_multinode_yaml_passes_rays_validation():
    # prepare_config would merge fake_multi_node/example.yaml, which the Ray wheel does not
    # ship; the file is complete without it, as the autoscaler reads it (`ray start --autoscaling-config`).
    cfg = load("local-fake-multinode.yaml")
    validate_config(cfg)
    assert cfg["provider"]["type"] == "fake_multinode"
    assert cfg["head_node_type"] == "ray.head.default"  # the only head name the fake provider knows
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    head_cpus = cfg["available_node_types"]["ray.head.default"]["resources"]["CPU"]
    assert any(t["max_workers"] > t.get("min_workers", 0) and t["resources"]["CPU"] > head_cpus for t in workers)


def test_validation_rejects_a_broken_config():
    # The check above is only worth something if it can fail.
    cfg = load("aws.yaml")
    broken = copy.deepcopy(cfg)
    del broken["available_node_types"]["gpu_spot"]["resources"]["GPU"]
    broken["available_node_types"]["gpu_spot"]["resources"]["GPUS"] = "one"  # not an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(cfg)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_cloud_yaml_is_what_the_docs_promise(name):
    cfg = load(name)
    head_type = cfg["head_node_type"]
    gpu_types = {n: t for n, t in cfg["available_node_types"].items() if n != head_type}
    assert cfg["available_node_types"][head_type]["resources"].get("GPU", 0) == 0  # CPU head
    assert gpu_types and all(t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 < t["max_workers"] for t in gpu_types.values())
    spot = [t for t in gpu_types.values() if "spot" in yaml.safe_dump(t["node_config"]).lower()]
    assert spot, "at least one spot/preemptible GPU type"

    setup = " ".join(cfg["setup_commands"])
    assert "download.pytorch.org/whl/cu" in setup and "-e ~/lam" in setup  # CUDA torch + this project
    assert re.search(r"LAM_STORAGE_PATH=(s3|gs)://", setup)
    assert cfg["file_mounts"]["~/lam"] == "." and "~/.ray/auth_token" in cfg["file_mounts"]

    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for cmd in cfg["head_start_ray_commands"][-1:] + cfg["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in cmd


# -----------------------------------------------------------------------------
# KubeRay manifests


def check_pod_template(template: dict, gpu: bool) -> None:
    containers = template["spec"]["containers"]
    assert containers
    for c in containers:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", c["name"]) and c["image"]
        env = {e["name"]: e for e in c.get("env", [])}
        # secrets only by reference: never a literal value in the manifest
        assert "valueFrom" in env["WANDB_API_KEY"] and "value" not in env["WANDB_API_KEY"]
        assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        for secret_name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS", "RAY_AUTH_TOKEN"):
            assert "value" not in env.get(secret_name, {})
        assert re.match(r"(s3|gs)://", env["LAM_STORAGE_PATH"]["value"])
        if gpu:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never LoadBalancer/NodePort
    assert not head.get("enableIngress", False)
    check_pod_template(head["template"], gpu=False)
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"]  # room to autoscale
        check_pod_template(g["template"], gpu=True)


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest_has_what_kuberay_requires(name):
    docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    if doc["kind"] == "RayCluster":
        check_ray_cluster_spec(doc["spec"])
    else:
        assert doc["kind"] == "RayJob"
        spec = doc["spec"]
        assert re.match(r"python \S*ray_jobs/(train|tune|eval)\.py ", spec["entrypoint"])
        assert spec["shutdownAfterJobFinishes"] is True
        yaml.safe_load(spec["runtimeEnvYAML"])
        check_ray_cluster_spec(spec["rayClusterSpec"])


@pytest.mark.parametrize("name", CLOUD_YAMLS + KUBERAY + ["local-fake-multinode.yaml", "../ray_jobs/runtime_env.yaml"])
def test_no_secret_is_written_in_a_config(name):
    text = (CLUSTER / name).read_text()
    assert not re.search(r"WANDB_API_KEY\s*[:=]\s*['\"]?[0-9a-f]{20,}", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert "aws_secret_access_key" not in text.lower() and "private_key" not in text
