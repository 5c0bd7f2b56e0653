"""Checks that the real local services answer; a missing one fails the test with how to start it."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

START = "start them with `scripts/services up` (or `make services`)"

KAFKA_BOOTSTRAP = "127.0.0.1:9092"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROMETHEUS_URL = "http://127.0.0.1:9090"
JAEGER_QUERY_URL = "http://127.0.0.1:16686"
JAEGER_OTLP_HTTP_URL = "http://127.0.0.1:14318"
JAEGER_OTLP_GRPC_TARGET = "127.0.0.1:14317"


def require_kafka() -> str:
    try:
        AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP}).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka is not reachable at {KAFKA_BOOTSTRAP} ({exc.args[0]}); {START}", pytrace=False)
    return KAFKA_BOOTSTRAP


def require_redis() -> str:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); {START}", pytrace=False)
    return REDIS_URL


def _require_http(name: str, url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status != 200:
                pytest.fail(f"{name} answered {resp.status} at {url}; {START}", pytrace=False)
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"{name} is not reachable at {url} ({exc}); {START}", pytrace=False)


def require_prometheus() -> str:
    _require_http("Prometheus", f"{PROMETHEUS_URL}/-/ready")
    return PROMETHEUS_URL


def require_jaeger() -> str:
    _require_http("Jaeger", f"{JAEGER_QUERY_URL}/api/services")
    return JAEGER_QUERY_URL


KAFKA_SASL_SSL_BOOTSTRAP = "127.0.0.1:9094"
KAFKA_MTLS_BOOTSTRAP = "127.0.0.1:9095"
KAFKA_TLS_DIR = Path(__file__).resolve().parents[2] / ".cache" / "services" / "kafka" / "tls"


@dataclass(frozen=True)
class KafkaSecurity:
    """The local broker's secured listeners (scripts/services): SASL over TLS and mutual TLS."""

    sasl_ssl_bootstrap: str
    mtls_bootstrap: str
    ca: Path
    client_cert: Path
    client_key: Path
    plain_username: str
    plain_password: str


def require_kafka_security() -> KafkaSecurity:
    restart = "restart Kafka with `scripts/services down kafka && scripts/services up kafka`"
    if not (KAFKA_TLS_DIR / "plain-password").exists():
        pytest.fail(f"the local broker's TLS material is missing in {KAFKA_TLS_DIR}; {restart}", pytrace=False)
    security = KafkaSecurity(KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_MTLS_BOOTSTRAP, KAFKA_TLS_DIR / "ca.pem",
                             KAFKA_TLS_DIR / "client.pem", KAFKA_TLS_DIR / "client-key.pem", "rampart",
                             (KAFKA_TLS_DIR / "plain-password").read_text())
    try:
        AdminClient({"bootstrap.servers": security.mtls_bootstrap, "security.protocol": "SSL",
                     "ssl.ca.location": str(security.ca), "ssl.certificate.location": str(security.client_cert),
                     "ssl.key.location": str(security.client_key)}).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka's mutual-TLS listener does not answer at {security.mtls_bootstrap} ({exc.args[0]}); "
                    f"{restart} (a broker started before the listeners were added lacks them)", pytrace=False)
    return security
