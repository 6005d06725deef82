"""The cluster definitions are valid for the tools that read them: Ray's autoscaler schema (as `ray up` checks
it), KubeRay's required fields, Ray's RuntimeEnv, and a Dockerfile whose torch matches vLLM's pin and ours.

    python -m pytest tests/test_cluster_configs.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_FILES = [CLUSTER / "aws" / "instraction.yaml", CLUSTER / "gcp" / "instraction.yaml"]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.parent.name)
def test_launcher_yaml_passes_rays_autoscaler_schema(path):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(path)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)  # the file as written: no unknown keys
    validate_config(prepare_config(raw))  # what `ray up` does with it


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.parent.name)
def test_launcher_groups_scale_to_zero_with_cpu_head_spot_cpu_and_gpu_training(path):
    cfg = _load(path)
    cloud = cfg["provider"]["type"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert cfg["idle_timeout_minutes"] > 0
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers.values())

    def is_spot(t):
        nc = t["node_config"]
        if cloud == "aws":
            return nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        return nc.get("scheduling", {}).get("provisioningModel") == "SPOT"

    def has_gpu(t):
        nc = t["node_config"]
        if cloud == "aws":
            return nc["InstanceType"].split(".")[0][0] in "gp"  # g5, p4d, p5: the GPU families
        return bool(nc.get("guestAccelerators"))

    assert not has_gpu(head)
    cpu_groups = [t for t in workers.values() if not has_gpu(t)]
    assert cpu_groups and all(is_spot(t) for t in cpu_groups)
    assert any(has_gpu(t) and t.get("labels", {}).get("instraction/role") == "train" for t in workers.values())
    assert "--autoscaling-config" in " ".join(cfg["head_start_ray_commands"])


def _groups(spec: dict) -> list[dict]:
    return spec["workerGroupSpecs"]


def _check_cluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    names = set()
    for group in _groups(spec):
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, (group.get("groupName"), key)
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]
        names.add(group["groupName"])
    gpus = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in _groups(spec)}
    assert gpus["cpu-decode"] is None and int(gpus["gpu-train"]) >= 1
    assert names == {"cpu-decode", "gpu-curate", "gpu-train"}


def test_kuberay_raycluster_manifest():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster") and doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_manifest():
    from ray.runtime_env import RuntimeEnv

    doc = _load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob") and doc["metadata"]["name"]
    spec = doc["spec"]
    assert "jobs/pretrain.py" in spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))  # Ray's own validation of the runtime env
    _check_cluster_spec(spec["rayClusterSpec"])


def test_runtime_env_is_valid_and_holds_no_credentials():
    from ray.runtime_env import RuntimeEnv

    text = (CLUSTER / "runtime_env.yaml").read_text()
    env = RuntimeEnv(**yaml.safe_load(text))
    assert env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
    assert not re.search(r"(?i)(secret|password|aws_access_key_id|token)\s*:", text)


def test_dockerfile_pins_agree_with_vllm_and_pyproject():
    from packaging.specifiers import SpecifierSet

    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    # vLLM wheels are built against one torch release: the pairs below come from vLLM's requirements.
    vllm_torch = {"0.33.0": "2.14.0"}
    assert vllm_torch[args["VLLM_VERSION"]] == args["TORCH_VERSION"]
    pyproject = (CLUSTER.parent / "pyproject.toml").read_text()
    torch_range = re.search(r'"torch([^"]+)"', pyproject).group(1)
    assert args["TORCH_VERSION"] in SpecifierSet(torch_range)
    import ray

    assert args["RAY_VERSION"] == ray.__version__
    for package in ("vllm==", "deepspeed==", "torch==", "ray[default,train,data]=="):
        assert package in text
