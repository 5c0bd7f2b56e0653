"""The one place that turns Rampart's Kafka config into librdkafka properties.

Every producer, consumer and admin client in Rampart is built here, so security settings, size
limits and delivery guarantees are set once and agree everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from rampart.config import KafkaConfig

__all__ = ["admin_client", "client_properties", "consumer", "consumer_properties", "producer",
           "producer_properties"]


def client_properties(config: KafkaConfig, client_id: str) -> dict[str, Any]:
    """Connection and security properties shared by every client."""
    props: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": client_id,
        "security.protocol": config.security_protocol,
        # librdkafka's own log lines go through Python logging (JSON in production), not raw stderr.
        "logger": logging.getLogger("rampart.kafka.client"),
    }
    optional = {
        "sasl.mechanism": config.sasl_mechanism,
        "sasl.username": config.sasl_username,
        "sasl.password": config.sasl_password.reveal() if config.sasl_password else None,
        "ssl.ca.location": config.ssl_ca_location,
        "ssl.certificate.location": config.ssl_certificate_location,
        "ssl.key.location": config.ssl_key_location,
        "ssl.key.password": config.ssl_key_password.reveal() if config.ssl_key_password else None,
    }
    if config.sasl_mechanism == "OAUTHBEARER":
        # librdkafka runs the client-credentials grant itself and refreshes the token before it expires.
        secret = config.sasl_oauthbearer_client_secret
        optional.update({
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.token.endpoint.url": config.sasl_oauthbearer_token_endpoint_url,
            "sasl.oauthbearer.client.id": config.sasl_oauthbearer_client_id,
            "sasl.oauthbearer.client.secret": secret.reveal() if secret else None,
            "sasl.oauthbearer.scope": config.sasl_oauthbearer_scope,
        })
    props.update({k: v for k, v in optional.items() if v is not None})
    props.update(config.extra)
    return props


def producer_properties(config: KafkaConfig, client_id: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, acks=all producer: a record is acknowledged only once every in-sync replica
    has it, and retries never duplicate or reorder within a partition."""
    props = client_properties(config, client_id)
    props.update({
        "enable.idempotence": True,
        "acks": "all",
        "message.max.bytes": config.max_message_bytes,
        "delivery.timeout.ms": config.delivery_timeout_ms,
        "compression.type": "lz4",
        "linger.ms": 5,
    })
    props.update(overrides)
    return props


def consumer_properties(config: KafkaConfig, client_id: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that never commits on its own: Rampart commits only after its outputs are acknowledged."""
    props = client_properties(config, client_id)
    props.update({
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.message.max.bytes": config.max_message_bytes,
        "max.partition.fetch.bytes": config.max_message_bytes,
    })
    props.update(overrides)
    return props


def producer(config: KafkaConfig, client_id: str, **overrides: Any) -> Producer:
    return Producer(producer_properties(config, client_id, **overrides))


def consumer(config: KafkaConfig, client_id: str, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_properties(config, client_id, group_id, **overrides))


def admin_client(config: KafkaConfig, client_id: str) -> AdminClient:
    return AdminClient(client_properties(config, client_id))
