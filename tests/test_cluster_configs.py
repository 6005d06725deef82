"""The cluster definitions are valid for the tools that read them: Ray's autoscaler schema (as `ray up` checks
it), KubeRay's required fields, Ray's RuntimeEnv, and a Dockerfile whose torch matches vLLM's pin and ours; KubeRay
pods fit the allocatable of the GKE machine types they are sized for.

    python -m pytest tests/test_cluster_configs.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from instraction.cluster import REPORT_POLL_ENV

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


# The GCE machine types of cluster/README.md's node groups: (vCPUs, memory GiB, GPUs), from
# cloud.google.com/compute/docs/general-purpose-machines (n2) and .../gpus (g2, a2). Compute Engine's "GB" of memory
# is 2^30 bytes (n2-standard-32: memoryMb 131072).
MACHINES = {
    "n2-standard-8": (8, 32, 0),
    "n2-standard-32": (32, 128, 0),
    "g2-standard-12": (12, 48, 1),
    "a2-highgpu-8g": (96, 680, 8),
}
# KubeRay group -> node type of cluster/gcp/instraction.yaml, whose machineType the pods are sized for.
GCP_NODE_TYPE = {"head": "head", "cpu-decode": "cpu_decode_spot", "gpu-curate": "gpu_curate_spot",
                 "gpu-train": "gpu_train"}
KUBERAY_AUTOSCALER_DEFAULT = {"cpu": "500m", "memory": "512Mi"}  # KubeRay's sidecar resources when unset
DAEMONSETS = (1.0, 1.0)  # CPU, GiB requested by GKE's per-node DaemonSets (measured ~0.5 CPU, ~0.7 GiB), rounded up
MEMTOTAL_FRACTION = 0.98  # the kernel's MemTotal, which the kubelet reports as capacity (125.8 GiB of 128)


def _cpu(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gib(quantity) -> float:
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix] / 2**30
    return float(text) / 2**30


def _tiers(amount: float, tiers: list[tuple[float, float]]) -> float:
    reserved, start = 0.0, 0.0
    for end, rate in tiers:
        reserved += rate * max(0.0, min(amount, end) - start)
        start = end
    return reserved


def gke_allocatable(vcpus: int, memory_gib: float) -> tuple[float, float]:
    """(CPU, GiB) a GKE Standard node leaves to pods (cloud.google.com/kubernetes-engine/docs/concepts/
    plan-node-sizes): memory reserved 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next
    112, 2% above 128, plus the 100 MiB eviction threshold; CPU 6% of the first core, 1% of the next, 0.5% of the
    next 2, 0.25% above 4."""
    memory = memory_gib * MEMTOTAL_FRACTION
    inf = float("inf")
    memory -= _tiers(memory, [(4, 0.25), (8, 0.20), (16, 0.10), (128, 0.06), (inf, 0.02)]) + 100 / 1024
    return vcpus - _tiers(vcpus, [(1, 0.06), (2, 0.01), (4, 0.005), (inf, 0.0025)]), memory


def test_gke_allocatable_matches_measured_nodes():
    """The model against GKE 1.25 nodes (2i2c-org/infrastructure#2121): n2-highmem-16 allocatable 15.89 CPU and
    116.5 GiB of 128 GiB; n2-highmem-4 3.92 CPU and 27.7 GiB of 32 GiB."""
    assert gke_allocatable(16, 128) == pytest.approx((15.89, 116.5), abs=0.6)
    assert gke_allocatable(4, 32) == pytest.approx((3.92, 27.7), abs=0.6)


def _pods(spec: dict) -> dict[str, dict]:
    """group name ("head" too) -> {"requests", "limits", "rayStartParams", "nodeSelector", "tolerations"}."""
    pods = {}
    for name, group in [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in _groups(spec))]:
        pod = group["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"].startswith("ray-")]
        pods[name] = {**container["resources"], "rayStartParams": group["rayStartParams"],
                      "nodeSelector": pod.get("nodeSelector"), "tolerations": pod.get("tolerations")}
    return pods


def _kuberay_specs() -> dict[str, dict]:
    return {"raycluster": _load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"],
            "rayjob": _load(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]["rayClusterSpec"]}


@pytest.mark.parametrize("manifest", ["raycluster", "rayjob"])
def test_kuberay_pods_fit_their_machine_type_with_headroom(manifest):
    """A pod requesting a whole machine stays Pending: allocatable is below capacity, and DaemonSets take a share."""
    spec = _kuberay_specs()[manifest]
    gcp_types = _load(CLUSTER / "gcp" / "instraction.yaml")["available_node_types"]
    readme = (CLUSTER / "README.md").read_text()
    for name, pod in _pods(spec).items():
        machine = gcp_types[GCP_NODE_TYPE[name]]["node_config"]["machineType"]
        assert machine in readme, machine
        vcpus, memory_gib, gpus = MACHINES[machine]
        cpu, memory = _cpu(pod["requests"]["cpu"]), _gib(pod["requests"]["memory"])
        if name == "head" and spec["enableInTreeAutoscaling"]:  # the autoscaler sidecar shares the head's node
            sidecar = spec.get("autoscalerOptions", {}).get("resources", {}).get("requests", KUBERAY_AUTOSCALER_DEFAULT)
            cpu, memory = cpu + _cpu(sidecar["cpu"]), memory + _gib(sidecar["memory"])
        allocatable_cpu, allocatable_gib = gke_allocatable(vcpus, memory_gib)
        assert cpu <= min(allocatable_cpu - DAEMONSETS[0], vcpus - 1), (name, machine, cpu, allocatable_cpu)
        assert memory <= min(allocatable_gib - DAEMONSETS[1], 0.9 * memory_gib), (name, machine, memory)
        assert int(pod["requests"].get("nvidia.com/gpu", 0)) == gpus, (name, machine)


@pytest.mark.parametrize("manifest", ["raycluster", "rayjob"])
def test_kuberay_limits_requests_and_ray_start_params_agree(manifest):
    """Guaranteed QoS (limits = requests), and Ray advertises what the pod holds: KubeRay derives num-cpus, num-gpus
    and memory from the limits, so any of them set in rayStartParams must say the same."""
    for name, pod in _pods(_kuberay_specs()[manifest]).items():
        limits, params = pod["limits"], pod["rayStartParams"]
        assert pod["requests"] == limits, name
        if name == "head":
            assert params["num-cpus"] == "0"
            continue
        if "num-cpus" in params:
            assert _cpu(params["num-cpus"]) == _cpu(limits["cpu"]), name
        if "num-gpus" in params:
            assert int(params["num-gpus"]) == int(limits.get("nvidia.com/gpu", 0)), name
        if "memory" in params:
            assert int(params["memory"]) == _gib(limits["memory"]) * 2**30, name


def test_raycluster_and_rayjob_size_their_pods_alike():
    specs = _kuberay_specs()
    assert _pods(specs["raycluster"]) == _pods(specs["rayjob"])


def test_runtime_env_is_valid_and_holds_no_credentials():
    from ray.runtime_env import RuntimeEnv

    text = (CLUSTER / "runtime_env.yaml").read_text()
    env = RuntimeEnv(**yaml.safe_load(text))
    assert env["env_vars"] == {**env["env_vars"], **REPORT_POLL_ENV}  # the job's poll value (instraction/cluster.py)
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


def test_dockerfile_installs_the_project_editable_beside_its_configs():
    """The RayJob runs the image's copy without a working_dir: a site-packages install would look for
    configs/deepspeed inside site-packages (instraction.train.engine.CONFIG_DIR)."""
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r'pip install [^\n]*-e "/home/ray/instraction\[test\]"', text)
    assert "ENV INSTRACTION_HOME=/home/ray/instraction" in text
    assert "COPY --chown=ray:ray configs /home/ray/instraction/configs" in text
    entrypoint = _load(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]["entrypoint"]
    assert "/home/ray/instraction/jobs/pretrain.py" in entrypoint
