"""Isolated Rampart deployments for tests: own topics, Redis prefix and key ring, and real
`rampart gateway` and `rampart worker` processes started on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from ingest.apikeys import ApiKeyRegistry
from rampart.config import KafkaConfig, KeyringConfig, StagesConfig, TopicsConfig
from rampart.kafka import admin_client
from rampart.keyring import KeyRing, generate_key, load_keyring, write_key
from rampart.topics import TopicNames, create_topics
from schemas.envelope import Envelope, Signal, decode

ROOT = Path(__file__).resolve().parents[2]
RAMPART = str(Path(sys.executable).parent / "rampart")
PIPELINE = StagesConfig().pipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    """One isolated Rampart deployment: topic prefix, Redis prefix, key ring, API keys."""

    prefix: str
    kafka_bootstrap: str
    redis_url: str
    tmp: Path
    partitions: int = 2
    keyring_file: str = ""
    processes: list[RampartProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keyring_file = str(self.tmp / "keyring.yaml")
        write_key(self.keyring_file, "gateway-1", make_signing=True)
        write_key(self.keyring_file, "worker-1", make_signing=False)  # workers sign with their own key
        self.topics = TopicNames(self.prefix)
        self.kafka = KafkaConfig(bootstrap_servers=self.kafka_bootstrap)
        create_topics(admin_client(self.kafka, "test"), TopicsConfig(prefix=self.prefix, partitions=self.partitions),
                      self.kafka.max_message_bytes, PIPELINE)
        self.registry = ApiKeyRegistry(redis.Redis.from_url(self.redis_url), self.prefix)

    def verifier(self) -> KeyRing:
        return load_keyring(KeyringConfig(file=self.keyring_file), {})

    def api_key(self, tenant: str = "acme", signals: tuple[Signal, ...] = tuple(Signal)) -> tuple[str, str]:
        """A new key, known to every running gateway when this returns: (key id, token)."""
        key, token = self.registry.create(tenant, signals, "test")
        self.wait_for_key_table()
        return key.key_id, token

    def wait_for_key_table(self, timeout_s: float = 10.0) -> None:
        """Wait until every running gateway has loaded the registry's current version."""
        version = self.registry.version()
        for process in self.processes:
            running = process.proc is not None and process.proc.poll() is None
            if not isinstance(process, GatewayProcess) or not running:
                continue
            deadline = time.monotonic() + timeout_s
            while f"rampart_gateway_apikey_table_version {float(version)}" not in process.metrics():
                assert time.monotonic() < deadline, f"gateway did not load API-key version {version}"
                time.sleep(0.05)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART")}
        env.update({
            "RAMPART_CONFIG": str(ROOT / "config" / "rampart.example.yaml"),
            "RAMPART__KAFKA__BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "RAMPART__TOPICS__PREFIX": self.prefix,
            "RAMPART__REDIS__URL": self.redis_url,
            "RAMPART__REDIS__KEY_PREFIX": self.prefix,
            "RAMPART__KEYRING__FILE": self.keyring_file,
            "RAMPART__GATEWAY__APIKEY_REFRESH_INTERVAL_S": "0.5",
            "RAMPART__GATEWAY__SHUTDOWN_TIMEOUT_S": "3",
            "RAMPART__LOGGING__FORMAT": "json",
        })
        env.update(overrides)
        return env

    def start_gateway(self, **overrides: str) -> GatewayProcess:
        process = GatewayProcess(self, overrides)
        self.processes.append(process)
        process.start()
        return process

    def start_worker(self, stages: str, **overrides: str) -> WorkerProcess:
        process = WorkerProcess(self, stages, overrides)
        self.processes.append(process)
        process.start()
        return process

    def start_sink(self, name: str = "otlp", **overrides: str) -> SinkProcess:
        process = SinkProcess(self, name, overrides)
        self.processes.append(process)
        process.start()
        return process

    def stop_all(self) -> None:
        """Stop the gateways and delete the deployment's topics, so runs do not fill the broker's disk."""
        for process in self.processes:
            process.stop()
        admin = admin_client(self.kafka, "test")
        names = self.topics.all(TopicsConfig().dlq_sinks, PIPELINE)
        for future in admin.delete_topics(names, request_timeout=30).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=30)

    def read_envelopes(self, signal: Signal, count: int, timeout_s: float = 30.0) -> list[Envelope]:
        """Read exactly ``count`` envelopes from the raw topic (fails if fewer arrive in time)."""
        return read_topic(self.kafka_bootstrap, self.topics.raw(signal), count, timeout_s)

    def read_envelopes_any(self, signal: Signal = Signal.TRACES) -> list[Envelope]:
        """Whatever is on the raw topic now."""
        return [decode(v) for v in read_raw(self.kafka_bootstrap, self.topics.raw(signal), 10)]

    def read_audit(self, timeout_s: float = 5.0) -> list[bytes]:
        return read_raw(self.kafka_bootstrap, self.topics.audit(), timeout_s)

    def stage_group(self, stages: str) -> str:
        """The consumer group of ``rampart worker --stages <stages>`` in this deployment."""
        return f"{self.prefix}.stage.{'+'.join(s.strip() for s in stages.split(','))}"

    def group_assignment(self, group_id: str, topic: str) -> tuple[str, dict[str, set[int]]]:
        """(group state, member id -> partitions of ``topic`` it owns), as the group coordinator
        describes the group now: the members that have joined and what the last rebalance gave them."""
        admin = admin_client(self.kafka, "test")
        description = admin.describe_consumer_groups([group_id], request_timeout=10)[group_id].result(timeout=15)
        owned = {member.member_id: {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic}
                 for member in description.members}
        return description.state.name, owned


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})


def read_raw(bootstrap: str, topic: str, timeout_s: float) -> list[bytes]:
    """Everything on ``topic`` up to its end offsets now."""
    c = _consumer(bootstrap)
    try:
        metadata = c.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        values: list[bytes] = []
        positions = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + timeout_s
        while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            positions[msg.partition()] = msg.offset() + 1
            values.append(msg.value())
        return values
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[Envelope]:
    deadline = time.monotonic() + timeout_s
    values: list[bytes] = []
    while time.monotonic() < deadline:
        values = read_raw(bootstrap, topic, max(1.0, deadline - time.monotonic()))
        if len(values) >= count:
            break
        time.sleep(0.3)
    assert len(values) == count, f"expected {count} records on {topic}, found {len(values)}"
    return [decode(v) for v in values]


class RampartProcess:
    """A `rampart <role>` child process with its own admin port and log file."""

    def __init__(self, deployment: Deployment, args: list[str], env: dict[str, str], admin_port: int) -> None:
        self.args, self.env, self.admin_port = args, env, admin_port
        self.log_path = deployment.tmp / f"{args[0]}-{admin_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([RAMPART, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rampart {self.args[0]} exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"rampart {self.args[0]} not ready within {timeout_s}s:\n{self.log()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class WorkerProcess(RampartProcess):
    def __init__(self, deployment: Deployment, stages: str, overrides: Mapping[str, str]) -> None:
        admin_port = free_port()
        env = deployment.env(RAMPART__STAGES__ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
                             RAMPART__KEYRING__SIGNING_KEY_ID="worker-1", **overrides)
        super().__init__(deployment, ["worker", "--stages", stages], env, admin_port)


class SinkProcess(RampartProcess):
    def __init__(self, deployment: Deployment, name: str, overrides: Mapping[str, str]) -> None:
        admin_port = free_port()
        env = deployment.env(RAMPART__SINKS__ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
                             RAMPART__KEYRING__SIGNING_KEY_ID="worker-1", **overrides)
        super().__init__(deployment, ["sink", name], env, admin_port)


class GatewayProcess(RampartProcess):
    def __init__(self, deployment: Deployment, overrides: Mapping[str, str]) -> None:
        self.http_port, self.grpc_port, admin_port = free_port(), free_port(), free_port()
        env = deployment.env(
            RAMPART__GATEWAY__HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            RAMPART__GATEWAY__GRPC_LISTEN=f"127.0.0.1:{self.grpc_port}",
            RAMPART__GATEWAY__ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
            **overrides)
        super().__init__(deployment, ["gateway"], env, admin_port)

    @property
    def http_url(self) -> str:
        scheme = "https" if "RAMPART__GATEWAY__TLS__CERT_FILE" in self.env else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def post(url: str, body: bytes, headers: Mapping[str, str], method: str = "POST",
         context: object = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; errors are answers too."""
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                     headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:  # type: ignore[arg-type]
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def deployments(kafka_bootstrap: str, redis_url: str, prefix: str, tmp: Path,
                partitions: int = 2) -> Iterator[Deployment]:
    deployment = Deployment(prefix, kafka_bootstrap, redis_url, tmp, partitions=partitions)
    try:
        yield deployment
    finally:
        deployment.stop_all()


__all__ = ["Deployment", "GatewayProcess", "SinkProcess", "WorkerProcess", "deployments", "free_port",
           "generate_key", "post", "read_topic"]
