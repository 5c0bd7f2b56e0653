"""The Kubernetes manifests in k8s/: valid for the API server, and consistent with the code they run.

Every manifest is checked against the schemas of real Kubernetes releases (kubernetes-validate, strict:
an unknown or misspelt field fails). The rest starts each container as far as that is possible
without a cluster: its arguments go through rampart's argument parser, its config file and
environment through the config loader (with throwaway files in place of the Secrets), and its key
ring, TLS files and Kafka credentials through the code that loads them at start-up. A mismatch
between a manifest and the code (a renamed config key, a probe on the wrong port, an HPA scaling on
a consumer group nobody runs) fails here, not in a cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from ingest.tls import server_ssl_context
from processors.registry import build as build_processors
from processors.runtime import plan_topics
from rampart.cli import _build_parser
from rampart.config import CONFIG_ENV_VAR, RampartConfig, load_config
from rampart.kafka import client_properties
from rampart.keyring import load_keyring, write_key
from rampart.settings import ConfigError
from rampart.streaming import faust_credentials
from sinks.runtime import build_sink
from tests.support.certs import TestCA

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
SECRET_TEMPLATES = K8S / "secrets.template.yaml"
# The oldest release the manifests need (PodDisruptionBudget.unhealthyPodEvictionPolicy is GA in
# 1.31, the preStop sleep action on by default since 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.31", kubernetes_validate.latest_version())
NAMESPACE = "rampart"
IMAGE = "ghcr.io/rampart-otel/rampart"
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DUMMY_PASSWORD = "not-a-real-password"
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")  # and at most 63 characters

# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
# name -> {key in the ConfigMap: file content}, from the kustomization's configMapGenerator.
GENERATED_CONFIGMAPS = {
    generator["name"]: {
        (entry.split("=", 1)[0] if "=" in entry else Path(entry).name): (K8S / entry.split("=", 1)[-1]).read_text()
        for entry in generator["files"]
    }
    for generator in KUSTOMIZATION.get("configMapGenerator", [])
}
RESOURCES = [(name, doc) for name in KUSTOMIZATION["resources"] for doc in _load_all(K8S / name)]
SECRETS = {doc["metadata"]["name"]: doc for doc in _load_all(SECRET_TEMPLATES)}


def _generated_configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
            "data": GENERATED_CONFIGMAPS[name]}


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in RESOURCES if doc["kind"] == kind]


WORKLOADS = _of_kind("Deployment") + _of_kind("Job")


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.workload['kind'].lower()}/{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def pod(self) -> dict[str, Any]:
        template: dict[str, Any] = self.workload["spec"]["template"]
        return template

    @property
    def argv(self) -> list[str]:
        # The image's ENTRYPOINT is ["rampart"]: args are rampart's arguments.
        command = self.spec.get("command")
        assert not command or command[0] == "rampart", f"{self.id}: runs {command[0]!r}, not rampart"
        return [*(command or [])[1:], *self.spec.get("args", [])]

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e["value"] for e in self.spec.get("env", []) if "value" in e}


CONTAINERS = [Container(w, c) for w in WORKLOADS for c in w["spec"]["template"]["spec"]["containers"]]
CONTAINER_IDS = [c.id for c in CONTAINERS]


def _parse(argv: list[str]) -> Any:
    return _build_parser().parse_args(argv)


def _role(container: Container) -> str:
    """The rampart command the container runs: gateway, worker, sink or topics."""
    role = container.argv[0]
    assert role in ("gateway", "worker", "sink", "topics"), f"{container.id}: runs rampart {role}"
    return role


def _stages(container: Container) -> list[str]:
    return [s.strip() for s in _parse(container.argv).stages.split(",") if s.strip()]


def _consumer_group(container: Container, config: RampartConfig) -> str | None:
    role = _role(container)
    if role == "worker":
        return plan_topics(config, _stages(container)).group_id
    if role == "sink":
        return f"{config.topics.prefix}.sink.{_parse(container.argv).name}"
    return None


def _uses_redis(container: Container) -> bool:
    # The gateway keeps API keys and rate limits there, dedup its marks, sinks delivered batches and budgets.
    role = _role(container)
    return role in ("gateway", "sink") or (role == "worker" and "dedup" in _stages(container))


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to a set of labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values) \
                or (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def _pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _port_of(container: Container, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.spec.get("ports", [])}
    assert port in named, f"{container.id}: no container port named {port!r}"
    return named[port]


def _listen_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(text: str | int) -> float:
    match = _QUANTITY.match(str(text))
    assert match, f"unexpected quantity {text!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


# --- the files a container would see ----------------------------------------------------------------

class PodFiles:
    """The files under a container's volume mounts, made real in a folder with throwaway secrets.

    Secret keys get content fit for what reads them (a real key ring, a CA and a matching server
    certificate and key), so the code that loads them at start-up can run on them.
    """

    def __init__(self, root: Path, container: Container, ca: TestCA) -> None:
        self.root = root
        self._mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in container.pod["spec"].get("volumes", [])}
        server = ca.issue("gateway", server=True)
        self._secret_content = {"ca.crt": ca.cert_path.read_text(), "tls.crt": server.cert.read_text(),
                                "tls.key": server.key.read_text(),
                                "hash-key": base64.b64encode(b"k" * 32).decode()}
        for mount in container.spec.get("volumeMounts", []):
            assert "subPath" not in mount, f"{container.id}: subPath mounts never see updates of their source"
            folder = root / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            self._mounts[mount["mountPath"]] = folder
            self._fill(folder, volumes[mount["name"]], container.id)

    def _fill(self, folder: Path, volume: Mapping[str, Any], where: str) -> None:
        if "configMap" in volume:
            self._fill_configmap(folder, volume["configMap"], where)
        elif "secret" in volume:
            self._fill_secret(folder, {"name": volume["secret"]["secretName"], **volume["secret"]}, where)
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                if "secret" in source:
                    self._fill_secret(folder, source["secret"], where)
                elif "configMap" in source:
                    self._fill_configmap(folder, source["configMap"], where)
                else:
                    raise AssertionError(f"{where}: unexpected projected source {sorted(source)}")

    @staticmethod
    def _fill_configmap(folder: Path, ref: Mapping[str, Any], where: str) -> None:
        assert ref["name"] in GENERATED_CONFIGMAPS, f"{where}: ConfigMap {ref['name']} is not generated by kustomize"
        data = GENERATED_CONFIGMAPS[ref["name"]]
        for item in ref.get("items", [{"key": k, "path": k} for k in data]):
            (folder / item["path"]).write_text(data[item["key"]])

    def _fill_secret(self, folder: Path, ref: Mapping[str, Any], where: str) -> None:
        template = SECRETS.get(ref["name"])
        assert template is not None, f"{where}: mounts Secret {ref['name']}, which secrets.template.yaml lacks"
        keys = template.get("stringData", {})
        for item in ref.get("items", [{"key": k, "path": k} for k in keys]):
            assert item["key"] in keys, f"{where}: Secret {ref['name']} has no key {item['key']!r} in the template"
            target = folder / item["path"]
            if item["key"] == "keyring.yaml":  # made as secrets.template.yaml says
                write_key(str(target), "sign-1", make_signing=True)
                write_key(str(target), "enc-1", make_signing=True, encryption=True)
            else:
                target.write_text(self._secret_content.get(item["key"], DUMMY_PASSWORD) + "\n")

    def local(self, path: str) -> Path | None:
        """Where the container's ``path`` lies here, if it lies on one of its mounts."""
        for mount_path in sorted(self._mounts, key=len, reverse=True):
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                return self._mounts[mount_path] / os.path.relpath(path, mount_path)
        return None


@dataclass
class Started:
    """A container taken as far as start-up goes without a cluster."""

    container: Container
    env: dict[str, str]                 # the container's environment, its paths made local
    config: RampartConfig               # as the container loads it (paths as the container sees them)
    local_config: RampartConfig         # the same with every file path made local


def _containerized(config: Any, files: PodFiles) -> Any:
    """``config`` with every path field that points into the local folder turned back into the container's path."""
    changes: dict[str, Any] = {}
    root = str(files.root)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("path") and isinstance(value, str) and value.startswith(root):
            changes[f.name] = "/" + os.path.relpath(value, root)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = _containerized(value, files)
    return dataclasses.replace(config, **changes)


def _localize(obj: Any, files: PodFiles, missing: list[str], prefix: str = "") -> Any:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path") and value is not None:
            local = files.local(value)
            if local is None or not local.is_file():
                missing.append(f"{prefix}{f.name}={value}")
            else:
                changes[f.name] = str(local)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = _localize(value, files, missing, f"{prefix}{f.name}.")
    return dataclasses.replace(obj, **changes)


def _start(container: Container, root: Path, ca: TestCA) -> Started:
    files = PodFiles(root, container, ca)
    env = {}
    for name, value in container.env.items():
        local = files.local(value) if value.startswith("/") else None
        env[name] = str(local) if local is not None else value
    assert CONFIG_ENV_VAR in env, f"{container.id}: {CONFIG_ENV_VAR} is not set"
    config_file = files.local(container.env[CONFIG_ENV_VAR])
    assert config_file is not None and config_file.is_file(), \
        f"{container.id}: {CONFIG_ENV_VAR}={container.env[CONFIG_ENV_VAR]} is on no mounted volume"
    try:
        config = load_config(str(config_file), env)
    except ConfigError as exc:
        problem = str(exc)
    else:
        missing: list[str] = []
        container_config = _containerized(config, files)
        local_config = _localize(container_config, files, missing)
        assert not missing, f"{container.id}: config names files that are not mounted: {missing}"
        return Started(container, env, container_config, local_config)
    pytest.fail(f"{container.id}: {problem}")


class Starter:
    """Starts each container once, when a test first asks for it, so a broken one fails its own tests only."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._ca = TestCA(tmp_path_factory.mktemp("ca"), "Kafka test CA")
        self._started: dict[str, Started] = {}

    def __getitem__(self, container_id: str) -> Started:
        if container_id not in self._started:
            container = next(c for c in CONTAINERS if c.id == container_id)
            self._started[container_id] = _start(container, self._tmp.mktemp("pod"), self._ca)
        return self._started[container_id]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Starter:
    return Starter(tmp_path_factory)


# --- the manifests are valid Kubernetes objects -----------------------------------------------------

VALIDATED = [(f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc) for name, doc in RESOURCES]
VALIDATED += [(f"{SECRET_TEMPLATES.name}:Secret/{name}", doc) for name, doc in SECRETS.items()]
VALIDATED += [(f"configMapGenerator:ConfigMap/{name}", _generated_configmap(name)) for name in GENERATED_CONFIGMAPS]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "resource"), VALIDATED, ids=[w for w, _ in VALIDATED])
def test_every_manifest_is_valid_for_the_api_server(where: str, resource: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problem = f"{where} is invalid for Kubernetes {version} at {'.'.join(map(str, exc.path))}: {exc.message}"
    else:
        return
    pytest.fail(problem)  # outside the except: the schema's own dump would bury the message


def test_kustomization_applies_every_manifest_but_never_the_secret_templates() -> None:
    manifests = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml")}
    generators = KUSTOMIZATION.get("configMapGenerator", [])
    config_files = {entry.split("=", 1)[-1] for generator in generators for entry in generator["files"]}
    assert set(KUSTOMIZATION["resources"]) == manifests - config_files - {"kustomization.yaml", SECRET_TEMPLATES.name}
    assert all(doc["kind"] != "Secret" for _, doc in RESOURCES), "a Secret in the kustomization would be re-applied"


def test_every_object_lives_in_the_rampart_namespace() -> None:
    namespaces = _of_kind("Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == [NAMESPACE]
    for where, doc in VALIDATED:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, where


def test_secret_templates_hold_placeholders_only() -> None:
    assert SECRETS, "no Secret templates"
    for name, secret in SECRETS.items():
        assert "data" not in secret, f"Secret {name}: base64 data could hide a real value; use stringData"
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE"), f"Secret {name}, key {key}: not a placeholder"


# --- what each container runs -----------------------------------------------------------------------

def test_every_image_is_rampart_pinned_to_the_project_version() -> None:
    expected = f"{IMAGE}:{PROJECT_VERSION}"
    for container in CONTAINERS:
        assert container.spec["image"] == expected, f"{container.id}: {container.spec['image']}"
        assert container.spec.get("imagePullPolicy") == "IfNotPresent", container.id
    assert KUSTOMIZATION["images"] == [{"name": IMAGE, "newName": IMAGE, "newTag": PROJECT_VERSION}]


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_command_is_a_complete_rampart_command(container: Container) -> None:
    try:
        args = _parse(container.argv)
    except SystemExit:
        pytest.fail(f"{container.id}: rampart {' '.join(container.argv)} does not parse")
    assert hasattr(args, "handler"), f"{container.id}: rampart {' '.join(container.argv)} names no command"
    assert args.config is None, f"{container.id}: the config comes from {CONFIG_ENV_VAR}, not --config"


def test_the_roles_the_pipeline_needs_each_have_a_deployment() -> None:
    deployments = [c for c in CONTAINERS if c.workload["kind"] == "Deployment"]
    commands = sorted(" ".join(c.argv) for c in deployments)
    assert commands == sorted(["gateway", "worker --stages validate", "worker --stages scrub",
                               "worker --stages dedup", "sink otlp", "sink prometheus"])
    jobs = [" ".join(c.argv) for c in CONTAINERS if c.workload["kind"] == "Job"]
    assert jobs == ["topics create"]


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_config_and_environment_load_as_the_container_would(container_id: str, started: Starter) -> None:
    """The fixture loaded the config with the container's environment; here the names read by name."""
    run = started[container_id]
    config = run.config
    by_name = {CONFIG_ENV_VAR, config.keyring.env_var, config.scrub.hash_key_env,
               *config.sinks.otlp.headers_from_env.values(), *config.sinks.prometheus.headers_from_env.values()}
    by_name |= {f"{name}_FILE" for name in by_name}
    for name in run.env:
        assert name.startswith("RAMPART__") or name in by_name, f"{container_id}: nothing reads {name}"
        secret_like = re.search(r"(PASSWORD|SECRET|TOKEN|_KEY|_KEYS)$", name)
        assert not secret_like, f"{container_id}: {name} puts a secret in the environment; use {name}_FILE"
    for entry in run.container.spec.get("env", []):
        assert "valueFrom" not in entry, f"{container_id}: {entry['name']}: secrets are mounted as files"
    for name, value in run.env.items():
        if name.endswith("_FILE") and value:  # empty: set to null on purpose
            assert Path(value).is_file(), f"{container_id}: {name}={run.container.env[name]} is not a mounted file"


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_start_up_succeeds_with_the_mounted_files(container_id: str, started: Starter) -> None:
    run = started[container_id]
    config, env, role = run.local_config, run.env, _role(run.container)
    kafka = client_properties(config.kafka, "test")
    assert kafka.get("sasl.password") == DUMMY_PASSWORD, f"{container_id}: the Kafka password file is not used"
    if config.kafka.security_protocol != "PLAINTEXT":
        assert faust_credentials(config.kafka) is not None
    if role == "topics":
        return
    keyring = load_keyring(config.keyring, env)
    assert keyring.signing_key_id is not None, f"{container_id}: every role but topics signs what it emits"
    if config.keyring.encrypt_unscrubbed and role in ("gateway", "worker"):
        keyring.require_encryption_key()
    if role == "gateway":
        assert server_ssl_context(config.gateway.tls) is not None, f"{container_id}: the gateway serves OTLP over TLS"
    elif role == "worker":
        assert build_processors(_stages(run.container), config, env)
    elif role == "sink":
        assert build_sink(_parse(run.container.argv).name, config, env).signals
    if _uses_redis(run.container):
        assert config.redis.password is not None, f"{container_id}: uses Redis without its password"


# --- probes, ports and listeners --------------------------------------------------------------------

ADMIN_LISTEN = {"gateway": lambda c: c.gateway.admin_listen, "worker": lambda c: c.stages.admin_listen,
                "sink": lambda c: c.sinks.admin_listen}


@pytest.mark.parametrize("container_id", [c.id for c in CONTAINERS if c.workload["kind"] == "Deployment"])
def test_probes_ask_the_admin_listener_of_the_role(container_id: str, started: Starter) -> None:
    run = started[container_id]
    host, port = _listen_port(ADMIN_LISTEN[_role(run.container)](run.config))
    assert ipaddress.ip_address(host).is_unspecified, f"{container_id}: admin on {host}: the kubelet cannot reach it"
    probes = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        assert probe in run.container.spec, f"{container_id}: no {probe}"
        http = run.container.spec[probe]["httpGet"]
        assert http["path"] == path, f"{container_id}: {probe} asks {http['path']}"
        assert _port_of(run.container, http["port"]) == port, f"{container_id}: {probe} on another port than {port}"
    annotations = run.container.pod["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(port), container_id


def test_gateway_listens_where_its_ports_and_service_say(started: Starter) -> None:
    gateways = [c for c in CONTAINERS if _role(c) == "gateway"]
    assert len(gateways) == 1
    run = started[gateways[0].id]
    listens = {"otlp-http": run.config.gateway.http_listen, "otlp-grpc": run.config.gateway.grpc_listen}
    for port_name, listen in listens.items():
        host, port = _listen_port(listen)
        assert ipaddress.ip_address(host).is_unspecified, f"gateway listens on {host} only"
        assert _port_of(run.container, port_name) == port
    (service,) = _of_kind("Service")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(run.container.workload))
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {4318: "otlp-http", 4317: "otlp-grpc"}
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


# --- pod security -----------------------------------------------------------------------------------

@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_pods_meet_the_restricted_pod_security_standard(container: Container) -> None:
    pod = container.pod["spec"]
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), f"{container.id}: {host_namespace}"
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, container.id
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}, container.id
    assert "sysctls" not in security, container.id
    assert pod["automountServiceAccountToken"] is False, container.id
    assert pod["serviceAccountName"] in {sa["metadata"]["name"] for sa in _of_kind("ServiceAccount")}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"{container.id}: volume {volume['name']} is {kinds}"
    for each in [*pod["containers"], *pod.get("initContainers", [])]:
        sc = each["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container.id
        assert sc["readOnlyRootFilesystem"] is True, container.id
        assert sc.get("privileged", False) is False, container.id
        assert sc["capabilities"] == {"drop": ["ALL"]}, container.id
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 10001) != 0, container.id
        assert all("hostPort" not in p for p in each.get("ports", [])), container.id
        mounts = {m["mountPath"]: m for m in each.get("volumeMounts", [])}
        # faust and Python need a writable /tmp with the root filesystem read-only.
        assert "/tmp" in mounts and "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
        assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp"), container.id


def test_namespace_enforces_the_restricted_standard_and_accounts_carry_no_token() -> None:
    (namespace,) = _of_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for account in _of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_every_container_has_requests_and_limits(container: Container) -> None:
    resources = container.spec["resources"]
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert _quantity(request) <= _quantity(limit), f"{container.id}: {resource} request {request} > limit {limit}"


# --- autoscaling and disruption budgets -------------------------------------------------------------

def _deployment(name: str) -> dict[str, Any]:
    found = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    assert found, f"no Deployment {name}"
    return found[0]


def test_every_deployment_has_one_hpa_owning_its_replica_count() -> None:
    targets = []
    for hpa in _of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), hpa["metadata"]["name"]
        deployment = _deployment(ref["name"])
        assert "replicas" not in deployment["spec"], f"{ref['name']}: replicas would undo the HPA on every apply"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], ref["name"]
        targets.append(ref["name"])
    assert sorted(targets) == sorted(d["metadata"]["name"] for d in _of_kind("Deployment"))


@pytest.mark.parametrize("container_id", [c.id for c in CONTAINERS if c.workload["kind"] == "Deployment"])
def test_hpa_scales_on_what_the_role_does(container_id: str, started: Starter) -> None:
    run = started[container_id]
    name = run.container.workload["metadata"]["name"]
    (hpa,) = [h for h in _of_kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
    group = _consumer_group(run.container, run.config)
    if group is None:  # the gateway: CPU-bound and stateless
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
        return
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "rampart_consumer_lag_records"
    # The label the workers put on the gauge (rampart/streaming.py): the group this Deployment runs.
    assert metric["external"]["metric"]["selector"] == {"matchLabels": {"group": group}}
    # The API server takes any string here, but the HPA controller turns the selector into a label
    # selector and fails on a value that is not a label value (a fused group "a+b" is not).
    assert LABEL_VALUE.fullmatch(group) and len(group) <= 63, f"{name}: group {group!r} is not a valid label value"
    assert hpa["spec"]["maxReplicas"] <= run.config.topics.partitions, \
        f"{name}: replicas beyond topics.partitions ({run.config.topics.partitions}) would sit idle"


def test_every_deployment_has_a_disruption_budget_selecting_exactly_its_pods() -> None:
    covered = []
    for pdb in _of_kind("PodDisruptionBudget"):
        selected = [w["metadata"]["name"] for w in WORKLOADS if _selects(pdb["spec"]["selector"], _pod_labels(w))]
        assert len(selected) == 1, f"PDB {pdb['metadata']['name']} selects {selected}"
        assert pdb["spec"].get("maxUnavailable") == 1
        covered += selected
    assert sorted(covered) == sorted(d["metadata"]["name"] for d in _of_kind("Deployment"))


def test_deployment_selectors_match_their_own_pods_only() -> None:
    for deployment in _of_kind("Deployment"):
        selector = deployment["spec"]["selector"]
        selected = [w["metadata"]["name"] for w in WORKLOADS if _selects(selector, _pod_labels(w))]
        assert selected == [deployment["metadata"]["name"]], f"{deployment['metadata']['name']} selects {selected}"


# --- network policies -------------------------------------------------------------------------------

POLICIES = _of_kind("NetworkPolicy")


def _policies_for(workload: Mapping[str, Any], policy_type: str) -> list[dict[str, Any]]:
    return [p for p in POLICIES
            if _selects(p["spec"]["podSelector"], _pod_labels(workload)) and policy_type in p["spec"]["policyTypes"]]


def _rule_ports(rule: Mapping[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def _is_from_anywhere(rule: Mapping[str, Any]) -> bool:
    peers = rule.get("from")
    return not peers or any(peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") for peer in peers)


def test_everything_is_denied_unless_allowed() -> None:
    deny = [p for p in POLICIES if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert sorted(deny[0]["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]


def test_every_network_policy_selects_rampart_pods() -> None:
    for policy in POLICIES:
        if policy["spec"]["podSelector"] != {}:
            assert any(_selects(policy["spec"]["podSelector"], _pod_labels(w)) for w in WORKLOADS), \
                policy["metadata"]["name"]


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_only_the_gateway_takes_traffic_from_outside(container_id: str, started: Starter) -> None:
    run = started[container_id]
    role = _role(run.container)
    rules = [rule for p in _policies_for(run.container.workload, "Ingress") for rule in p["spec"].get("ingress", [])]
    open_ports = set().union(*[_rule_ports(r) for r in rules if _is_from_anywhere(r)])
    if role == "gateway":
        assert open_ports == {_listen_port(run.config.gateway.http_listen)[1],
                              _listen_port(run.config.gateway.grpc_listen)[1]}
    else:
        assert open_ports == set(), f"{container_id} takes traffic from anywhere on {open_ports}"
    if role in ADMIN_LISTEN:
        admin = _listen_port(ADMIN_LISTEN[role](run.config))[1]
        admitting = [r for r in rules if admin in _rule_ports(r)]
        assert admitting, f"{container_id}: Prometheus cannot scrape port {admin}"
        for rule in admitting:
            assert all(peer.get("namespaceSelector") == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
                       for peer in rule["from"]), f"{container_id}: admin port {admin} open beyond monitoring"


def _url_port(url: str) -> int:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.port or {"https": 443, "http": 80, "redis": 6379, "rediss": 6379}[parts.scheme]


@pytest.mark.parametrize("container_id", CONTAINER_IDS)
def test_egress_goes_only_where_the_role_needs(container_id: str, started: Starter) -> None:
    run = started[container_id]
    config = run.config
    rules = [rule for p in _policies_for(run.container.workload, "Egress") for rule in p["spec"].get("egress", [])]
    for rule in rules:
        assert rule.get("to") and rule.get("ports"), f"{container_id}: an egress rule open to anywhere or any port"
    expected = {53} | {_url_port(server) for server in config.kafka.bootstrap_servers.split(",")}
    if _uses_redis(run.container):
        expected.add(_url_port(config.redis.url))
    if _role(run.container) == "sink":
        sink = _parse(run.container.argv).name
        expected.add(_url_port(config.sinks.otlp.endpoint if sink == "otlp" else config.sinks.prometheus.endpoint))
    assert set().union(*[_rule_ports(r) for r in rules]) == expected
