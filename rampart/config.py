"""Rampart's configuration tree: one YAML file plus ``RAMPART__SECTION__KEY`` environment overrides.

Loaded once in ``main()`` and passed down; nothing here reads the environment on import.
Units are in the field names (``_ms``, ``_bytes``, ``_s``). ``config/rampart.example.yaml`` shows
every key with its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from rampart.settings import ConfigError, Secret, bounded, internal_field, load, parse_yaml_file, secret_field

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "KafkaConfig",
    "KeyringConfig",
    "LoggingConfig",
    "RampartConfig",
    "RedisConfig",
    "TopicsConfig",
    "load_config",
]

CONFIG_ENV_VAR = "RAMPART_CONFIG"
DEFAULT_CONFIG_PATH = "config/rampart.example.yaml"

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = secret_field()
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    # The largest record a producer may send. The broker's message.max.bytes (and every topic's
    # max.message.bytes) must be at least this; the local broker and `rampart topics create` use it.
    max_message_bytes: int = bounded(10 * 1024 * 1024, min=1024 * 1024, max=256 * 1024 * 1024)
    # How long a producer may try to deliver one record before it reports failure.
    delivery_timeout_ms: int = bounded(30_000, min=1_000, max=900_000)
    # Extra librdkafka properties passed through unchanged (e.g. {"socket.keepalive.enable": "true"}).
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicsConfig:
    prefix: str = "rampart"
    partitions: int = bounded(6, min=1, max=10_000)
    replication_factor: int = bounded(1, min=1, max=32)
    retention_ms: int = bounded(7 * 24 * 3600 * 1000, min=60_000)
    # One dead-letter topic per sink name: <prefix>.dlq.<sink>.
    dlq_sinks: tuple[str, ...] = ("otlp", "prometheus")


@dataclass(frozen=True)
class KeyringConfig:
    # A YAML file holding the HMAC keys (see `rampart keys generate`). When unset, keys come from
    # the environment variable named by env_var, as "id1:base64,id2:base64".
    file: str | None = None
    env_var: str = "RAMPART_KEYS"
    # The key this process signs with; every other key in the ring only verifies. When unset,
    # the file's own signing_key_id is used.
    signing_key_id: str | None = None


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    password: Secret | None = secret_field()
    socket_timeout_s: float = bounded(2.0, min=0.01, max=60.0)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class RampartConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    keyring: KeyringConfig = field(default_factory=KeyringConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Where this config was read from; relative paths inside it are resolved against its folder.
    source: str = internal_field("<defaults>")


def load_config(path: str, env: Mapping[str, str] | None = None) -> RampartConfig:
    """Read ``path``, apply ``RAMPART__…`` overrides from ``env`` and validate everything.

    Raises ConfigError (one line: key, file or variable, what was expected) on any mistake.
    """
    data = parse_yaml_file(path)
    config = load(RampartConfig, data, path, os.environ if env is None else env)
    base = os.path.dirname(os.path.abspath(path))
    keyring = config.keyring
    if keyring.file is not None and not os.path.isabs(keyring.file):
        keyring = replace(keyring, file=os.path.join(base, keyring.file))
    return replace(config, keyring=keyring, source=path)
