"""Checks the Kubernetes manifests under deploy/k8s.

Every object must pass the strict Kubernetes JSON schema of each supported
Kubernetes version, so a misspelt field fails. The sensor DaemonSets must
also have what the sensor depends on at run time: privileged, host network,
host PID only in the eBPF one, host mounts, env vars, the installation key
from a Secret, and the contract's resource settings.

Run through scripts/test-manifests.sh, which installs the validator into a
virtual environment.
"""

from decimal import Decimal
from pathlib import Path
import re

import kubernetes_validate
import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"

# Oldest and newest Kubernetes releases whose schemas the validator bundles
# and that these manifests support.
SCHEMA_VERSIONS = ["1.25.0", "1.37.0"]

SENSOR_FILES = {"ebpf": "sensor-ebpf.yaml", "no-ebpf": "sensor-no-ebpf.yaml"}

# Suffixes of Kubernetes resource quantities and their multipliers.
QUANTITY_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
}


def parse_quantity(text):
    """Parses a Kubernetes quantity such as 128M, 900m or 0.9."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(text))
    assert match, f"invalid Kubernetes quantity {text!r}"
    number, suffix = match.groups()
    assert suffix in QUANTITY_SUFFIXES, f"unsupported quantity suffix in {text!r}"
    return Decimal(number) * QUANTITY_SUFFIXES[suffix]


def load_documents(path):
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def all_objects():
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in load_documents(path):
            objects.append(pytest.param(doc, id=f"{path.name}:{doc.get('kind')}"))
    return objects


def sensor(tier):
    docs = load_documents(K8S_DIR / SENSOR_FILES[tier])
    assert len(docs) == 1, f"{SENSOR_FILES[tier]} must hold exactly one object"
    return docs[0]


def pod_spec(daemonset):
    return daemonset["spec"]["template"]["spec"]


def sensor_container(daemonset):
    containers = pod_spec(daemonset)["containers"]
    assert len(containers) == 1, "the sensor pod must have one container"
    return containers[0]


def host_mounts(daemonset):
    """Maps each mount path in the container to its host path."""
    volumes = {v["name"]: v for v in pod_spec(daemonset).get("volumes", [])}
    mounts = {}
    for mount in sensor_container(daemonset).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "hostPath" in volume, f"volume {mount['name']} is not a hostPath"
        mounts[mount["mountPath"]] = (volume["hostPath"]["path"], mount)
    return mounts


def env_map(daemonset):
    return {e["name"]: e for e in sensor_container(daemonset).get("env", [])}


def test_manifest_directory_has_expected_files():
    names = sorted(p.name for p in K8S_DIR.glob("*.yaml"))
    assert names == ["namespace.yaml", "sensor-ebpf.yaml", "sensor-no-ebpf.yaml", "server.yaml"]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("obj", all_objects())
def test_object_matches_kubernetes_schema(obj, version):
    # strict=True rejects unknown fields, which Kubernetes would drop or
    # reject on apply.
    kubernetes_validate.validate(obj, version, strict=True)


def test_validator_rejects_misspelt_field():
    # Guards against a validator that accepts anything.
    broken = sensor("ebpf")
    pod_spec(broken)["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)


def test_objects_live_in_picket_namespace():
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in load_documents(path):
            if doc["kind"] == "Namespace":
                assert doc["metadata"]["name"] == "picket"
            else:
                assert doc["metadata"]["namespace"] == "picket", f"{path.name} {doc['kind']}"


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_sensor_daemonset_is_privileged_on_host_network(tier):
    daemonset = sensor(tier)
    assert daemonset["kind"] == "DaemonSet"
    assert pod_spec(daemonset)["hostNetwork"] is True
    assert sensor_container(daemonset)["securityContext"]["privileged"] is True
    # Host network keeps the node's resolver unless this is set, and the
    # sensor must resolve the server's Service name.
    assert pod_spec(daemonset)["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_ebpf_daemonset_uses_host_pid():
    assert pod_spec(sensor("ebpf"))["hostPID"] is True


def test_no_ebpf_daemonset_keeps_own_pid_namespace():
    assert pod_spec(sensor("no-ebpf")).get("hostPID", False) is False


def test_ebpf_daemonset_adds_sys_admin():
    added = sensor_container(sensor("ebpf"))["securityContext"]["capabilities"]["add"]
    assert added == ["SYS_ADMIN"]


def test_both_daemonsets_share_one_name():
    # Applying the other file then replaces the DaemonSet instead of
    # running two sensors on every node.
    assert sensor("ebpf")["metadata"]["name"] == sensor("no-ebpf")["metadata"]["name"]


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_selector_matches_pod_labels(tier):
    daemonset = sensor(tier)
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    for key, value in selector.items():
        assert labels.get(key) == value, key


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_sensor_mounts_host_root_and_netns_read_only(tier):
    mounts = host_mounts(sensor(tier))
    root_path, root_mount = mounts["/rootfs"]
    netns_path, netns_mount = mounts["/netns"]
    assert root_path == "/"
    assert root_mount["readOnly"] is True
    assert netns_path == "/var/run/docker/netns"
    assert netns_mount["readOnly"] is True
    # Namespaces created after the sensor started only appear with
    # propagation from the host.
    assert netns_mount["mountPropagation"] == "HostToContainer"


def test_ebpf_daemonset_mounts_kernel_paths():
    mounts = host_mounts(sensor("ebpf"))
    for path in ["/sys/kernel/debug", "/sys/kernel/btf", "/lib/modules"]:
        assert path in mounts, f"missing mount {path}"
        assert mounts[path][0] == path


def test_no_ebpf_daemonset_mounts_only_root_and_netns():
    assert set(host_mounts(sensor("no-ebpf"))) == {"/rootfs", "/netns"}


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_sensor_env_points_at_mounts(tier):
    env = env_map(sensor(tier))
    assert env["HOST_FS"]["value"] == "/rootfs"
    assert env["NET_NS"]["value"] == "/netns"


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_installation_key_comes_from_secret(tier):
    key = env_map(sensor(tier))["LC_INSTALLATION_KEY"]
    assert "value" not in key, "the installation key must not be inlined"
    reference = key["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "picket-installation-key"
    assert reference["key"] == "installation-key"


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_sensor_reads_key_from_environment(tier):
    # `-d -` makes the sensor read LC_INSTALLATION_KEY.
    assert sensor_container(sensor(tier))["args"] == ["-d", "-"]


@pytest.mark.parametrize("tier", SENSOR_FILES)
def test_sensor_resources_match_contract(tier):
    resources = sensor_container(sensor(tier))["resources"]
    assert parse_quantity(resources["requests"]["memory"]) == 128 * 10**6
    assert parse_quantity(resources["limits"]["memory"]) == 256 * 10**6
    assert parse_quantity(resources["limits"]["cpu"]) == Decimal("0.9")


def test_quantity_parser_reads_suffixes():
    assert parse_quantity("128M") == 128_000_000
    assert parse_quantity("128Mi") == 128 * 2**20
    assert parse_quantity("900m") == Decimal("0.9")
    assert parse_quantity("0.9") == Decimal("0.9")
    with pytest.raises(AssertionError):
        parse_quantity("lots")


def test_server_is_single_replica_recreate():
    docs = {d["kind"]: d for d in load_documents(K8S_DIR / "server.yaml")}
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    assert claims == [docs["PersistentVolumeClaim"]["metadata"]["name"]]


def test_server_service_exposes_container_ports():
    docs = {d["kind"]: d for d in load_documents(K8S_DIR / "server.yaml")}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names, port["name"]


def test_server_public_url_names_the_service():
    docs = {d["kind"]: d for d in load_documents(K8S_DIR / "server.yaml")}
    args = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    service = docs["Service"]["metadata"]
    url = args[args.index("--advertise-url") + 1]
    assert url.startswith(f"https://{service['name']}.{service['namespace']}.svc")
