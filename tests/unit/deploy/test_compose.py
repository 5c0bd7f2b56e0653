"""docker-compose.yml, its overlays, their config files and the Dockerfile, checked with real tools:
compose-go's loader (what Docker Compose itself runs), Rampart's own CLI parser and config loader,
promtool, Jaeger's config validator and a Dockerfile parser."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rampart.admin import split_listen
from rampart.cli import _build_parser
from rampart.config import RampartConfig, load_config

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "deploy" / "compose"
VALIDATOR_SOURCES = COMPOSE_DIR / "validator"
VALIDATOR = ROOT / ".cache" / "bin" / "compose-validate"
JAEGER = ROOT / ".cache" / "bin" / "jaeger"   # built by scripts/services install
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RAMPART_IMAGE = f"rampart:{PYPROJECT['project']['version']}"
SECRETS_DIR = COMPOSE_DIR / "secrets"

# The deployments one can start: the base file alone and with each overlay.
DEPLOYMENTS = {
    "base": ["docker-compose.yml"],
    "kafka-sasl": ["docker-compose.yml", "deploy/compose/kafka-sasl.yml"],
    "gateway-tls": ["docker-compose.yml", "deploy/compose/gateway-tls.yml"],
}
ADMIN_LISTEN = {"gateway": "gateway", "worker": "stages", "sink": "sinks"}   # role -> config section
PINNED_TAG = re.compile(r"^(?:[a-z0-9._-]+/)*[a-z0-9._-]+:v?\d+\.\d+\.\d+(?:-[a-z0-9.]+)?$")


# ------------------------------------------------------------------ loading the model


@pytest.fixture(scope="session")
def compose_validate() -> Path:
    """compose-go's loader as a small binary, (re)built from deploy/compose/validator when stale."""
    newest_source = max(p.stat().st_mtime for p in VALIDATOR_SOURCES.iterdir())
    if not VALIDATOR.exists() or VALIDATOR.stat().st_mtime < newest_source:
        subprocess.run([str(VALIDATOR_SOURCES / "build.sh")], check=True, timeout=900)
    return VALIDATOR


def run_validator(validator: Path, *files: str) -> subprocess.CompletedProcess[str]:
    # A bare environment, so the model does not depend on who runs the test.
    return subprocess.run([str(validator), *files], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=120, check=False)


@pytest.fixture(scope="session", params=list(DEPLOYMENTS))
def project(request: pytest.FixtureRequest, compose_validate: Path) -> dict[str, Any]:
    """The project Docker Compose would run, as compose-go normalises it (anchors merged, short
    syntax expanded, paths absolute)."""
    result = run_validator(compose_validate, *DEPLOYMENTS[request.param])
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(project["services"])


def rampart_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services(project).items() if s.get("image") == RAMPART_IMAGE}


def role(service: dict[str, Any]) -> str | None:
    """gateway, worker or sink for a long-running Rampart process; None for one-shot commands."""
    if service.get("entrypoint"):
        return None
    first = service["command"][0]
    return first if first in ADMIN_LISTEN else None


def long_running(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in rampart_services(project).items() if role(s)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (service.get("environment") or {}).items() if v is not None}


def mounted_secrets(service: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> secret name."""
    return {s.get("target") or f"/run/secrets/{s['source']}": s["source"] for s in service.get("secrets") or []}


def config_file(project: dict[str, Any], service: dict[str, Any], target: str) -> Path:
    source = next(c["source"] for c in service.get("configs") or [] if c["target"] == target)
    return Path(project["configs"][source]["file"])


def rampart_config_path() -> str:
    return dockerfile_env()["RAMPART_CONFIG"]


def load_service_config(project: dict[str, Any], name: str, tmp_path: Path) -> RampartConfig:
    """The service's configuration as Rampart itself loads it from the mounted file and its environment.

    Secret files are read at load time: each /run/secrets/NAME the environment names is replaced by a
    stand-in file, after checking that the service mounts that secret.
    """
    service = services(project)[name]
    mounted = mounted_secrets(service)
    env = environment(service)
    for key, value in env.items():
        if value.startswith("/run/secrets/"):
            assert value in mounted, f"{name}: {key}={value} but the service mounts no such secret"
            stand_in = tmp_path / name / mounted[value]
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("stand-in-secret\n", encoding="utf-8")
            env[key] = str(stand_in)
    return load_config(str(config_file(project, service, rampart_config_path())), env)


# ------------------------------------------------------------------ the validator itself


def test_the_validator_rejects_what_compose_rejects(compose_validate: Path, tmp_path: Path) -> None:
    broken = {
        "unknown_key.yml": "services:\n  a:\n    image: busybox:1.36.1\n    replica: 2\n",
        "undefined_secret.yml": "services:\n  a:\n    image: busybox:1.36.1\n    secrets: [nope]\n",
        "bad_depends_on.yml": "services:\n  a:\n    image: busybox:1.36.1\n    depends_on: [ghost]\n",
    }
    for file_name, text in broken.items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
        result = run_validator(compose_validate, str(tmp_path / file_name))
        assert result.returncode != 0, f"{file_name} was accepted"


@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_compose_files_load_with_compose_go(compose_validate: Path, deployment: str) -> None:
    result = run_validator(compose_validate, *DEPLOYMENTS[deployment])
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ images and ports


def test_images_are_rampart_or_pinned(project: dict[str, Any]) -> None:
    for name, service in services(project).items():
        image = service["image"]
        if image.split(":")[0] == "rampart":
            assert image == RAMPART_IMAGE, f"{name}: {image}, but pyproject.toml's version makes {RAMPART_IMAGE}"
            assert Path(service["build"]["context"]) == ROOT and service["build"]["dockerfile"] == "Dockerfile", name
        else:
            assert PINNED_TAG.match(image), f"{name}: {image} is not pinned to an exact version"
            assert "build" not in service, name


def test_published_ports_listen_on_loopback_only(project: dict[str, Any]) -> None:
    published = 0
    for name, service in services(project).items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            published += 1
    assert published, "nothing published: clients could not reach the gateways"


# ------------------------------------------------------------------ Rampart's own command lines and config


def rampart_invocations(service: dict[str, Any]) -> list[list[str]]:
    """Every `rampart ...` argv the service runs: its command under the image's ENTRYPOINT, or each
    rampart command of its `sh -c` script."""
    entrypoint = service.get("entrypoint")
    if not entrypoint:
        return [list(service["command"])]
    assert entrypoint == ["/bin/sh", "-c"], entrypoint
    found = []
    for line in "\n".join(service["command"]).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, at_start = list(lexer), True
        for i, word in enumerate(words):
            if at_start and word == "rampart":
                argv = []
                for arg in words[i + 1:]:
                    if arg in (";", "|", "||", "&&", "&", ")"):
                        break
                    argv.append(arg)
                found.append(argv)
            at_start = word in (";", "|", "||", "&&", "&", "(", "if", "then", "else", "elif", "do", "!")
        assert found or "rampart" not in line, f"missed a rampart command in {line!r}"
    return found


def test_every_rampart_command_parses(project: dict[str, Any]) -> None:
    parser = _build_parser()
    seen = set()
    for name, service in rampart_services(project).items():
        for argv in rampart_invocations(service):
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: `rampart {' '.join(argv)}` does not parse")
            assert hasattr(args, "handler"), f"{name}: `rampart {' '.join(argv)}` runs no command"
            seen.add(" ".join(argv[:2]))
    # The init service creates the topics and a first API key; every role runs somewhere.
    assert {"topics create", "apikeys create", "gateway", "worker --stages", "sink otlp", "sink prometheus"} <= seen


def test_every_rampart_service_config_loads(project: dict[str, Any], tmp_path: Path) -> None:
    """Every RAMPART__ variable names a real key with a valid value, every secret file it names is mounted."""
    for name, service in rampart_services(project).items():
        config = load_service_config(project, name, tmp_path)
        assert config.keyring.file in mounted_secrets(service), f"{name}: key ring {config.keyring.file} not mounted"


def test_secret_variables_rampart_reads_by_name_point_at_mounted_secrets(project: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    for name, service in rampart_services(project).items():
        config = load_service_config(project, name, tmp_path)
        sinks = config.sinks
        read_by_name = {config.keyring.env_var, config.scrub.hash_key_env,
                        *sinks.otlp.headers_from_env.values(), *sinks.prometheus.headers_from_env.values()}
        for key, value in environment(service).items():
            if not key.startswith("RAMPART__") and key.endswith("_FILE"):
                assert key.removesuffix("_FILE") in read_by_name, f"{name}: Rampart never reads {key}"
                assert value in mounted_secrets(service), f"{name}: {key}={value} is not a mounted secret"


def test_rampart_processes_listen_inside_the_network_and_report_health(project: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    for name, service in long_running(project).items():
        config = load_service_config(project, name, tmp_path)
        host, port = split_listen(getattr(config, ADMIN_LISTEN[role(service) or ""]).admin_listen)
        assert host == "0.0.0.0", f"{name}: admin listener on {host}: Prometheus could not scrape it"
        health = urlsplit(environment(service)["RAMPART_HEALTH_URL"])
        assert (health.hostname, health.port, health.path) == ("127.0.0.1", port, "/healthz"), \
            f"{name}: the health check asks {health.geturl()}, the admin listener is on port {port}"
        if role(service) == "gateway":
            for listen in (config.gateway.http_listen, config.gateway.grpc_listen):
                assert split_listen(listen)[0] == "0.0.0.0", f"{name}: {listen}"


def test_rampart_services_share_the_image_config_path(project: dict[str, Any]) -> None:
    for name, service in rampart_services(project).items():
        assert config_file(project, service, rampart_config_path()) == COMPOSE_DIR / "rampart.yaml", name
        assert "RAMPART_CONFIG" not in environment(service), name


def test_rampart_reaches_the_other_services_by_name(project: dict[str, Any], tmp_path: Path) -> None:
    names = set(services(project))
    kafka_env = environment(services(project)["kafka"])
    protocols = dict(item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = {listener.split("://")[1]: protocols[listener.split("://")[0]]
                  for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    jaeger = yaml.safe_load(config_file(project, services(project)["jaeger"], "/etc/jaeger/config.yaml")
                            .read_text(encoding="utf-8"))
    jaeger_http_port = int(jaeger["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1])
    for name in rampart_services(project):
        config = load_service_config(project, name, tmp_path)
        for server in config.kafka.bootstrap_servers.split(","):
            # The protocol the client speaks is the one the broker advertises there.
            assert advertised.get(server) == config.kafka.security_protocol, f"{name}: {server}"
        assert urlsplit(config.redis.url).hostname in names
        otlp = urlsplit(config.sinks.otlp.endpoint)
        assert (otlp.hostname, otlp.port) == ("jaeger", jaeger_http_port)
        assert urlsplit(config.sinks.prometheus.endpoint).hostname == "prometheus"
    assert "--web.enable-remote-write-receiver" in services(project)["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in services(project)["prometheus"]["command"]


# ------------------------------------------------------------------ secrets


SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_?KEY|HASH_KEY|_KEYS)$", re.IGNORECASE)


def test_secrets_come_from_files_never_from_the_compose_file(project: dict[str, Any]) -> None:
    declared = project.get("secrets") or {}
    for name, service in services(project).items():
        for secret in service.get("secrets") or []:
            assert secret["source"] in declared, f"{name} mounts undeclared secret {secret['source']}"
        for key in environment(service):
            assert not SECRET_NAME.search(key), f"{name}: {key} puts a secret in the compose file; use {key}_FILE"
    for secret_name, secret in declared.items():
        path = Path(secret["file"])
        assert path.parent == SECRETS_DIR, f"{secret_name}: {path} is not under deploy/compose/secrets/"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not ignored by git"


def test_make_secrets_creates_every_secret_file(compose_validate: Path, tmp_path: Path) -> None:
    """Run the script in a copy of the tree and check it writes every file any deployment mounts."""
    needed = set()
    for files in DEPLOYMENTS.values():
        result = run_validator(compose_validate, *files)
        needed |= {Path(s["file"]).name for s in (json.loads(result.stdout).get("secrets") or {}).values()}
    copy = tmp_path / "checkout"
    (copy / "deploy" / "compose").mkdir(parents=True)
    (copy / ".venv" / "bin").mkdir(parents=True)
    for name in ("make-secrets.sh", "rampart.yaml"):
        shutil.copy2(COMPOSE_DIR / name, copy / "deploy" / "compose" / name)
    (copy / ".venv" / "bin" / "rampart").symlink_to(ROOT / ".venv" / "bin" / "rampart")
    script = copy / "deploy" / "compose" / "make-secrets.sh"
    for _ in range(2):  # the second run must keep what the first made
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        assert done.returncode == 0, done.stderr
    made = copy / "deploy" / "compose" / "secrets"
    assert needed <= {p.name for p in made.iterdir()}, needed - {p.name for p in made.iterdir()}
    assert made.stat().st_mode & 0o077 == 0, "the secrets folder must be private to its owner"
    env = {"PATH": os.environ.get("PATH", ""), "RAMPART__KEYRING__FILE": str(made / "keyring.yaml")}
    ring = subprocess.run([str(ROOT / ".venv" / "bin" / "rampart"), "--config", str(COMPOSE_DIR / "rampart.yaml"),
                           "keys", "list"], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert ring.returncode == 0 and "signing" in ring.stdout, ring.stderr
    if load_config(str(COMPOSE_DIR / "rampart.yaml"), {}).keyring.encrypt_unscrubbed:
        assert "encrypt" in ring.stdout, "keyring.encrypt_unscrubbed needs an encryption key in the ring"


# ------------------------------------------------------------------ how the services are wired


def test_every_stage_and_sink_runs_as_its_own_scalable_service(project: dict[str, Any], tmp_path: Path) -> None:
    running = long_running(project)
    commands = {tuple(s["command"]): s["deploy"]["replicas"] for s in running.values()}
    pipeline = load_service_config(project, next(iter(running)), tmp_path).stages.pipeline
    for stage in pipeline:
        assert commands.get(("worker", "--stages", stage), 0) >= 1, f"no service runs stage {stage} alone"
    for sink in ("otlp", "prometheus"):
        assert commands.get(("sink", sink), 0) >= 1, f"no service runs sink {sink}"
    assert commands.get(("gateway",), 0) >= 2, "two gateways at least"


def test_rampart_services_wait_for_init(project: dict[str, Any]) -> None:
    everything = services(project)
    init = everything["init"]
    assert init["restart"] == "no"
    for dependency in ("kafka", "redis"):
        assert init["depends_on"][dependency]["condition"] == "service_healthy"
        assert everything[dependency].get("healthcheck", {}).get("test"), f"{dependency} has no health check"
    for name, service in long_running(project).items():
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully", name


def test_rampart_containers_are_locked_down(project: dict[str, Any]) -> None:
    for name, service in rampart_services(project).items():
        assert service.get("read_only") is True, name
        assert "/tmp" in (service.get("tmpfs") or []), f"{name}: faust needs a writable /tmp"
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in (service.get("security_opt") or []), name


def test_prometheus_scrapes_every_rampart_process(project: dict[str, Any], tmp_path: Path) -> None:
    prometheus = services(project)["prometheus"]
    path = config_file(project, prometheus, "/etc/prometheus/prometheus.yml")
    scraped: dict[str, int] = {}
    for job in yaml.safe_load(path.read_text(encoding="utf-8"))["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped |= dict.fromkeys(sd["names"], sd["port"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host == "localhost" or host in services(project), f"{job['job_name']}: {target}"
    assert set(scraped) <= set(services(project)), set(scraped) - set(services(project))
    for name, service in long_running(project).items():
        config = load_service_config(project, name, tmp_path)
        port = split_listen(getattr(config, ADMIN_LISTEN[role(service) or ""]).admin_listen)[1]
        assert scraped.get(name) == port, f"{name}'s /metrics on {port} is not scraped"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make install` (scripts/services install) brings it"
    result = subprocess.run([promtool, "check", "config", str(COMPOSE_DIR / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_jaeger_accepts_its_config() -> None:
    assert JAEGER.exists(), "Jaeger is missing: `make install` (scripts/services install) builds it"
    result = subprocess.run([str(JAEGER), "validate", "--config", str(COMPOSE_DIR / "jaeger.yaml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_load_balancer_reaches_the_gateways(project: dict[str, Any], tmp_path: Path) -> None:
    config = load_service_config(project, "gateway", tmp_path).gateway
    text = (COMPOSE_DIR / "haproxy.cfg").read_text(encoding="utf-8")
    backends = {int(port) for port in re.findall(r"^\s*server-template \S+ \S+ gateway:(\d+)", text, re.M)}
    assert backends == {split_listen(config.http_listen)[1], split_listen(config.grpc_listen)[1]}
    assert set(re.findall(r"check port (\d+)", text)) == {str(split_listen(config.admin_listen)[1])}
    binds = {int(port) for port in re.findall(r"^\s*bind :(\d+)", text, re.M)}
    lb = services(project)["gateway-lb"]
    assert binds == {p["target"] for p in lb["ports"]}
    assert config_file(project, lb, "/usr/local/etc/haproxy/haproxy.cfg") == COMPOSE_DIR / "haproxy.cfg"


# ------------------------------------------------------------------ Dockerfile, .dockerignore, pins


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def stages() -> list[list[dict[str, Any]]]:
    """Instructions grouped by build stage, comments left out."""
    grouped: list[list[dict[str, Any]]] = []
    for instruction in dockerfile().structure:
        if instruction["instruction"] == "FROM":
            grouped.append([])
        if instruction["instruction"] != "COMMENT" and grouped:
            grouped[-1].append(instruction)
    return grouped


def dockerfile_env() -> dict[str, str]:
    return dict(dockerfile().envs)


def test_dockerfile_is_multi_stage_on_pinned_bases() -> None:
    assert len(stages()) >= 2
    for image in dockerfile().parent_images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), f"base image {image} is not pinned"


def test_final_stage_runs_rampart_as_an_unprivileged_user() -> None:
    final = stages()[-1]
    by_kind: dict[str, list[str]] = {}
    for instruction in final:
        by_kind.setdefault(instruction["instruction"], []).append(instruction["value"])
    uid = by_kind["USER"][-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {uid}: a fixed, unprivileged uid"
    assert any(f"--uid {uid}" in run for run in by_kind["RUN"]), "the user must exist (getpass looks it up)"
    assert json.loads(by_kind["ENTRYPOINT"][-1]) == ["rampart"]
    assert dockerfile_env()["RAMPART_CONFIG"] == "/etc/rampart/rampart.yaml"
    healthcheck = by_kind["HEALTHCHECK"][-1]
    assert "RAMPART_HEALTH_URL" in healthcheck and "CMD [" in healthcheck
    # Only the built virtualenv comes into the final stage: no sources, secrets or build tools.
    assert all(copy.startswith("--from=builder ") for copy in by_kind["COPY"])
    assert not any(re.search(r"apt-get|apk |gcc|build-essential", run) for run in by_kind["RUN"])


def test_healthcheck_command_tells_healthy_from_not() -> None:
    final = [i["value"] for i in stages()[-1] if i["instruction"] == "HEALTHCHECK"][-1]
    command = json.loads(final.split("CMD", 1)[1])

    class Admin(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path, healthy in (("/healthz", True), ("/readyz", False)):
            env = {**os.environ, "RAMPART_HEALTH_URL": base + path}
            python = str(ROOT / ".venv" / "bin" / "python")
            result = subprocess.run([python, *command[1:]], env=env, capture_output=True, timeout=30, check=False)
            assert (result.returncode == 0) is healthy, (path, result.stderr)
    finally:
        server.shutdown()
        server.server_close()


def test_builder_installs_the_pinned_dependencies() -> None:
    runs = " ".join(i["value"] for i in stages()[0] if i["instruction"] == "RUN")
    assert "-r deploy/constraints.txt" in runs and "-c deploy/constraints.txt" in runs and "pip" in runs


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for line in patterns:
        negated = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/")
        if any(fnmatch(prefix, pattern) or fnmatch(prefix, pattern.removeprefix("**/")) for prefix in prefixes):
            included = negated
    return included


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: secrets can only leak into the context by name"
    for instruction in dockerfile().structure:
        if instruction["instruction"] == "COPY" and not instruction["value"].startswith("--from"):
            for source in instruction["value"].split()[:-1]:
                assert dockerignore_includes(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for private in (".venv/bin/python", ".git/config", ".cache/bin/jaeger", "secrets/keyring.yaml",
                    "deploy/compose/secrets/keyring.yaml", "tests/conftest.py"):
        assert not dockerignore_includes(private, patterns), f"{private} would be in the build context"


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            specifiers = list(requirement.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{line}: pin exact versions"
            pins[canonicalize_name(requirement.name)] = specifiers[0].version
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned: .venv/bin/python deploy/constraints.py > deploy/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {line}"


def test_constraints_leave_dev_tools_out() -> None:
    text = (ROOT / "deploy" / "constraints.txt").read_text(encoding="utf-8").lower()
    for tool in ("pytest", "mypy==", "ruff", "hypothesis", "opentelemetry-sdk", "dockerfile-parse"):
        assert f"\n{tool}" not in text, f"{tool} is a dev tool"

