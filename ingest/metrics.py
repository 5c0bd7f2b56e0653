"""The gateway's Prometheus metrics, declared together and built from a registry passed in."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS_BYTES = (1024, 8192, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


class GatewayMetrics(NamedTuple):
    requests: Counter
    received_bytes: Counter
    request_duration: Histogram
    request_size: Histogram
    in_flight: Gauge
    kafka_queue: Gauge
    kafka_reachable: Gauge
    envelopes: Counter
    ratelimit_redis_errors: Counter
    apikeys_loaded: Gauge
    apikey_table_version: Gauge
    apikey_refresh_errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            requests=Counter(
                "rampart_gateway_requests", "OTLP export requests by outcome. tenant is empty when the request "
                "was not authenticated; code is the HTTP status (gRPC requests use the equivalent).",
                ["transport", "signal", "tenant", "code"], registry=registry),
            received_bytes=Counter(
                "rampart_gateway_received_bytes", "Payload bytes accepted into Kafka, after decompression.",
                ["signal", "tenant"], registry=registry),
            request_duration=Histogram(
                "rampart_gateway_request_duration_seconds", "Time from request start to response, "
                "including Kafka's acknowledgement.", ["transport", "signal"], buckets=_LATENCY_BUCKETS_S,
                registry=registry),
            request_size=Histogram(
                "rampart_gateway_request_size_bytes", "Payload size after decompression.", ["signal"],
                buckets=_SIZE_BUCKETS_BYTES, registry=registry),
            in_flight=Gauge("rampart_gateway_requests_in_flight", "Requests being handled now.", registry=registry),
            kafka_queue=Gauge("rampart_gateway_kafka_queue_messages",
                              "Records waiting in the producer for Kafka's acknowledgement.", registry=registry),
            kafka_reachable=Gauge("rampart_gateway_kafka_reachable", "1 while the Kafka cluster answers.",
                                  registry=registry),
            envelopes=Counter("rampart_gateway_envelopes", "Signed envelopes acknowledged by Kafka (a request "
                              "larger than one Kafka record becomes several).", ["signal"], registry=registry),
            ratelimit_redis_errors=Counter(
                "rampart_gateway_ratelimit_redis_errors", "Rate-limit checks that could not reach Redis and "
                "were decided by gateway.redis_failure_policy.", ["policy"], registry=registry),
            apikeys_loaded=Gauge("rampart_gateway_apikeys_loaded", "API keys in this replica's cache.",
                                 registry=registry),
            apikey_table_version=Gauge("rampart_gateway_apikey_table_version",
                                       "Version of the API-key registry this replica has loaded.", registry=registry),
            apikey_refresh_errors=Counter("rampart_gateway_apikey_refresh_errors",
                                          "Failed reloads of the API-key registry from Redis.", registry=registry),
        )
