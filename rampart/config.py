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

from rampart.settings import (
    ConfigError,
    Secret,
    bounded,
    internal_field,
    load,
    matching,
    parse_yaml_file,
    path_field,
    resolve_paths,
    secret_field,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "DedupConfig",
    "ExportBudgetConfig",
    "ForgeryConfig",
    "ForgeryStateConfig",
    "GatewayConfig",
    "KafkaConfig",
    "KeyringConfig",
    "LoggingConfig",
    "PrometheusSinkConfig",
    "RampartConfig",
    "RateLimitConfig",
    "RedisConfig",
    "ScrubConfig",
    "SinksConfig",
    "StagesConfig",
    "TlsConfig",
    "TopicsConfig",
    "ValidateConfig",
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
    ssl_ca_location: str | None = path_field()
    ssl_certificate_location: str | None = path_field()
    ssl_key_location: str | None = path_field()
    ssl_key_password: Secret | None = secret_field()
    # OAUTHBEARER: tokens from an OIDC provider's token endpoint (client-credentials grant).
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: Secret | None = secret_field()
    sasl_oauthbearer_scope: str | None = None
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
    file: str | None = path_field()
    env_var: str = "RAMPART_KEYS"
    # The key this process signs with; every other key in the ring only verifies. When unset,
    # the file's own signing_key_id is used.
    signing_key_id: str | None = None
    # Encrypt payloads (AES-256-GCM) wherever they may hold data not yet scrubbed: the raw and
    # intermediate topics before scrub, and rejected records. Needs encryption keys in the key file.
    encrypt_unscrubbed: bool = False
    # The key new payloads are encrypted with; unset: the key file's encryption_key_id.
    encryption_key_id: str | None = None
    # Operators' public release keys (`rampart keys operator`): key id -> base64 Ed25519 public key.
    # Not secret. A batch comes back from quarantine only with a release signed by one of them, so
    # the services' own envelope keys cannot release anything.
    release_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key Rampart writes starts with this, so several deployments can share a Redis.
    key_prefix: str = "rampart"
    password: Secret | None = secret_field()
    socket_timeout_s: float = bounded(2.0, min=0.01, max=60.0)


_LISTEN = r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}"
_LISTEN_HINT = "host:port, e.g. 127.0.0.1:4318 or 0.0.0.0:4318"


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS for a listener. Both files set: TLS on; client_ca_file set too: mutual TLS required."""

    cert_file: str | None = path_field()
    key_file: str | None = path_field()
    client_ca_file: str | None = path_field()
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per tenant, shared by every gateway replica through Redis."""

    requests_per_s: float = bounded(500.0, min=0.001)
    burst_requests: float = bounded(1000.0, min=1)
    bytes_per_s: float = bounded(64 * 1024 * 1024, min=1)
    burst_bytes: float = bounded(128 * 1024 * 1024, min=1)
    # Each replica takes up to this many seconds' worth of both rates from Redis at a time and spends
    # it locally (whole requests only): N replicas can admit at most N * lease_s seconds' worth beyond
    # the buckets. 0: one Redis call per request, exact. docs/gateway.md, "Rate limits".
    lease_s: float = bounded(0.1, min=0.0, max=10.0)


@dataclass(frozen=True)
class GatewayConfig:
    # Written into every envelope; defaults to "<hostname>-<pid>".
    id: str | None = None
    http_listen: str = matching("127.0.0.1:4318", _LISTEN, _LISTEN_HINT)
    grpc_listen: str = matching("127.0.0.1:4317", _LISTEN, _LISTEN_HINT)
    # /metrics, /healthz and /readyz; keep it off the public interface.
    admin_listen: str = matching("127.0.0.1:9464", _LISTEN, _LISTEN_HINT)
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Request body as received (compressed or not), and after gzip decompression.
    max_request_bytes: int = bounded(16 * 1024 * 1024, min=1024, max=1024 * 1024 * 1024)
    max_decompressed_bytes: int = bounded(64 * 1024 * 1024, min=1024, max=1024 * 1024 * 1024)
    # Requests being handled at once; beyond this the gateway sheds load with 503 + Retry-After.
    max_in_flight: int = bounded(256, min=1, max=100_000)
    # How long a request waits for Kafka's acknowledgement before answering 503/UNAVAILABLE.
    kafka_ack_timeout_ms: int = bounded(5_000, min=100, max=120_000)
    # Retry-After sent with 503/UNAVAILABLE.
    retry_after_s: int = bounded(2, min=1, max=3600)
    # A client that has not sent its whole request by then is cut off (slow-loris defence).
    request_timeout_s: float = bounded(30.0, min=0.1, max=3600.0)
    # On SIGTERM: how long requests in flight may take to finish, then how long queued audit events
    # get to reach Kafka. Every request has been answered before the process exits.
    shutdown_timeout_s: float = bounded(15.0, min=0.0, max=600.0)
    # What rate limiting does when Redis cannot be reached: "open" lets requests through (with a
    # metric and a log line), "closed" answers 503.
    redis_failure_policy: Literal["open", "closed"] = "open"
    # How often each replica reloads the API-key registry from Redis: the upper bound on how long
    # a revoked key keeps working.
    apikey_refresh_interval_s: float = bounded(2.0, min=0.1, max=300.0)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    # A replica's unspent rate-limit lease is given back and renewed at the latest this long after
    # Redis granted it.
    rate_limit_lease_ttl_s: float = bounded(1.0, min=0.01, max=60.0)
    # Per-tenant overrides of rate_limit, by tenant id.
    tenant_rate_limits: dict[str, RateLimitConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidateConfig:
    """Limits of the validate stage. Defaults follow the OpenTelemetry SDK's span limits where it has them."""

    # Timestamps must lie within [received_at - max_age_s, received_at + max_future_s].
    max_age_s: float = bounded(24 * 3600.0, min=1.0)
    max_future_s: float = bounded(300.0, min=0.0)
    max_attributes: int = bounded(128, min=1, max=100_000)
    max_events: int = bounded(128, min=0, max=100_000)
    max_links: int = bounded(128, min=0, max=100_000)
    max_string_bytes: int = bounded(32 * 1024, min=16, max=64 * 1024 * 1024)
    max_name_bytes: int = bounded(1024, min=16, max=1024 * 1024)
    max_value_depth: int = bounded(8, min=1, max=64)
    # Resource attributes through which a payload might claim a tenant; never trusted.
    tenant_keys: tuple[str, ...] = ("tenant.id", "tenant", "rampart.tenant")
    # "overwrite": set them to the authenticated tenant; "drop": remove them.
    tenant_key_action: Literal["overwrite", "drop"] = "overwrite"


ScrubAction = Literal["drop", "mask", "hash", "truncate"]


@dataclass(frozen=True)
class DetectorConfig:
    enabled: bool = True
    action: ScrubAction = "mask"


@dataclass(frozen=True)
class CustomRuleConfig:
    pattern: str = matching("x", r".+", "a regular expression")
    action: ScrubAction = "mask"


def default_detectors() -> dict[str, DetectorConfig]:
    return {
        "email": DetectorConfig(), "payment_card": DetectorConfig(), "jwt": DetectorConfig(),
        "credentials": DetectorConfig(), "aws_access_key": DetectorConfig(),
        "private_key": DetectorConfig(action="drop"), "url_password": DetectorConfig(),
        "secret_param": DetectorConfig(), "sql_literal": DetectorConfig(),
        "ip_address": DetectorConfig(enabled=False, action="hash"),
    }


@dataclass(frozen=True)
class ScrubConfig:
    """Rules of the scrub stage. See docs/stages.md for what each detector matches."""

    # Built-in detectors by name; listing one here overrides only that one's defaults.
    detectors: dict[str, DetectorConfig] = field(default_factory=default_detectors)
    # Extra rules by name: a regular expression and an action.
    rules: dict[str, CustomRuleConfig] = field(default_factory=dict)
    # Attributes whose key ends with one of these (case-insensitive) lose their value whatever it is.
    sensitive_keys: tuple[str, ...] = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                                       "x-api-key", "password", "passwd", "secret", "api_key", "access_token")
    sensitive_key_action: ScrubAction = "drop"
    # When not empty, only attributes with these keys are kept (allow-list mode); all others are dropped.
    allow_keys: tuple[str, ...] = ()
    # The HMAC key for the "hash" action comes from this environment variable (base64, >= 32 bytes):
    # hashed values stay joinable across batches without being readable.
    hash_key_env: str = "RAMPART_SCRUB_HASH_KEY"
    # "truncate" keeps this many leading characters of a match.
    truncate_keep_chars: int = bounded(4, min=0, max=64)


@dataclass(frozen=True)
class DedupConfig:
    # How long a batch or item is remembered. Redis holds about 100 bytes per span for this long:
    # at 20,000 spans/s and 300 s, some 600 MB. Older replays are caught by validate.max_age_s.
    window_s: float = bounded(300.0, min=1.0, max=7 * 24 * 3600.0)
    # When Redis cannot be reached: "pass" lets batches through unchecked (with a metric and an audit
    # event); "pause" stops consuming until Redis is back.
    redis_failure_policy: Literal["pass", "pause"] = "pass"


@dataclass(frozen=True)
class ForgeryStateConfig:
    """Snapshots of the forgery baselines in Redis, so a restarted worker, or one that gains partitions
    in a rebalance, does not learn from scratch (docs/forgery.md, "State in Redis")."""

    enabled: bool = True
    # Each (tenant, service) that received data is saved at most this often.
    snapshot_interval_s: float = bounded(30.0, min=1.0, max=86400.0)
    # Keys are <redis.key_prefix>:<key_prefix>:<version>:<tenant>[/<service>] ...
    key_prefix: str = "forgery"
    # ... and expire this long after their last save (a tenant or service gone quiet is forgotten).
    ttl_s: float = bounded(7 * 86400.0, min=60.0, max=365 * 86400.0)
    # A compressed snapshot larger than this is not saved (counted): it bounds Redis memory per key.
    max_snapshot_bytes: int = bounded(4 * 1024 * 1024, min=1024, max=256 * 1024 * 1024)
    # Redis calls of the forgery stage wait at most this long; after a failure Redis is left alone for
    # retry_after_s (the stage keeps working from memory meanwhile).
    timeout_s: float = bounded(0.25, min=0.01, max=10.0)
    retry_after_s: float = bounded(10.0, min=0.1, max=3600.0)


@dataclass(frozen=True)
class ForgeryConfig:
    """Screening of data sent with valid credentials (docs/forgery.md). Times are envelope times."""

    # After a tenant's first batch, this long only teaches the baselines: new (principal, service)
    # pairs are learned, not flagged, and no statistical score is given.
    learning_s: float = bounded(600.0, min=0.0, max=30 * 86400.0)
    # Services a principal may start reporting after learning, by "tenant/principal" ("tenant/*": any
    # principal of the tenant). Anything else new is flagged with reason new_service.
    allowed_new_services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Span end times must lie within [received_at - max_lag_s, received_at + max_lead_s] (reason
    # timestamp_window), and a batch's median lag within max_skew_s (or 6 MADs) of what the
    # principal usually shows (reason timestamp_skew).
    max_lag_s: float = bounded(900.0, min=1.0, max=7 * 86400.0)
    max_lead_s: float = bounded(60.0, min=0.0, max=86400.0)
    max_skew_s: float = bounded(30.0, min=1.0, max=86400.0)
    # Distinct values per (tenant, service, attribute key) in a window may grow to
    # max(cardinality_floor, cardinality_growth x the previous clean window) (reason cardinality_cap);
    # a batch of mostly never-seen values of a usually repetitive key is flagged sooner (cardinality_novelty).
    cardinality_window_s: float = bounded(300.0, min=10.0, max=86400.0)
    cardinality_floor: int = bounded(2000, min=10, max=100_000_000)
    cardinality_growth: float = bounded(10.0, min=1.5, max=1000.0)
    cardinality_min_novel: int = bounded(20, min=1, max=100_000)
    # Replays: span content digests (ids and timestamps left out) remembered this long; 1 in
    # replay_sample_every spans is remembered (chosen by duration, so a replay is sampled alike).
    replay_window_s: float = bounded(900.0, min=10.0, max=7 * 86400.0)
    replay_sample_every: int = bounded(2, min=1, max=1024)
    replay_min_matches: int = bounded(2, min=1, max=10_000)
    max_replay_digests: int = bounded(500_000, min=1_000, max=100_000_000)
    # Statistical baselines: peers' recent latency and error data, and each source's share of a
    # service's volume, forget with these half-lives.
    recent_half_life_s: float = bounded(20.0, min=1.0, max=86400.0)
    volume_half_life_s: float = bounded(30.0, min=1.0, max=86400.0)
    # Robust z at which each piece of evidence counts one half (see docs/forgery.md, "Scoring").
    latency_z: float = bounded(3.5, min=1.0, max=100.0)
    error_z: float = bounded(1.5, min=0.5, max=100.0)
    volume_z: float = bounded(3.0, min=1.0, max=100.0)
    # Lineage (reason orphan_spans): a sampled parent id that has not appeared orphan_wait_s after its
    # child arrived is an orphan (longer than the longest flush delay between a caller and a callee);
    # 1 in lineage_sample_every span ids is remembered, at most max_span_ids (~100 bytes each); orphan
    # counts forget with lineage_half_life_s.
    orphan_wait_s: float = bounded(10.0, min=1.0, max=3600.0)
    lineage_sample_every: int = bounded(1, min=1, max=1024)
    lineage_half_life_s: float = bounded(20.0, min=1.0, max=86400.0)
    max_span_ids: int = bounded(500_000, min=1_000, max=100_000_000)
    # Where the callers' span ids are looked up: "memory" (this worker's own; enough when one worker
    # sees every span of a trace: trace_id keying or a single worker), "redis" (an index every worker
    # writes to, under state.key_prefix, bounded by state.timeout_s), or "auto": "redis" with
    # stages.keying tenant_service (a service's worker never sees its callers' spans), else "memory".
    # In Redis, max_span_ids bounds each tenant's ids per orphan_wait_s bucket to a quarter of it.
    lineage_index: Literal["auto", "memory", "redis"] = "auto"
    # Shared index: a child is resolved only once every service of its tenant was screened past its due
    # time (a worker lagging behind another must not make orphans); a service not screened for this long
    # (envelope time) is taken as quiet, and a child still undecided this long after its due time is dropped.
    lineage_max_lag_s: float = bounded(60.0, min=1.0, max=3600.0)
    # Metrics (reasons metric_outlier, metric_drift): a source's reading against its peers' median is
    # an outlier when metric_z of its usual scatter and metric_min_ratio times away; a drift when a
    # series' mean over metric_drift_s (well longer than a rolling deploy) is metric_drift_ratio times
    # (and metric_z standard errors) off the frozen reference. At most max_metric_series series are tracked.
    metric_z: float = bounded(5.0, min=1.0, max=100.0)
    metric_min_ratio: float = bounded(3.0, min=1.01, max=1000.0)
    metric_drift_ratio: float = bounded(1.25, min=1.01, max=1000.0)
    metric_drift_s: float = bounded(240.0, min=1.0, max=86400.0)
    max_metric_series: int = bounded(100_000, min=100, max=10_000_000)
    # A batch scoring at or above: gets rampart.integrity.score/.reasons resource attributes ...
    annotate_threshold: float = bounded(0.3, min=0.0, max=1.0)
    # ... is kept out of every baseline ...
    baseline_threshold: float = bounded(0.3, min=0.0, max=1.0)
    # ... is quarantined whole with reason forgery_suspected (rampart.quarantine.<signal> and an audit
    # event; `rampart quarantine` reviews and releases it), if enabled.
    quarantine_threshold: float = bounded(0.8, min=0.0, max=1.0)
    quarantine: bool = True
    # Memory bounds: least recently seen state goes first.
    max_groups: int = bounded(20_000, min=10, max=10_000_000)
    max_span_names_per_service: int = bounded(200, min=1, max=100_000)
    max_principals_per_group: int = bounded(32, min=1, max=10_000)
    max_cardinality_keys: int = bounded(5_000, min=10, max=1_000_000)
    state: ForgeryStateConfig = field(default_factory=ForgeryStateConfig)


@dataclass(frozen=True)
class StagesConfig:
    """How stream stages are chained and run (see docs/stages.md)."""

    # The order of the stream stages between the raw and the clean topics. A worker runs one of
    # them or several consecutive ones fused (`rampart worker --stages scrub,dedup`).
    pipeline: tuple[str, ...] = ("validate", "scrub", "dedup")
    # How the first stage keys what it emits: "trace_id" (every span of a trace on one partition of
    # the next topic), "tenant_service" (key tenant/service.name), or "gateway" (keep the input key).
    keying: Literal["gateway", "trace_id", "tenant_service"] = "trace_id"
    # Records processed at once per signal in one worker process (overlaps waits for Kafka's acks).
    concurrency: int = bounded(4, min=1, max=256)
    # /metrics, /healthz, /readyz of a worker process.
    admin_listen: str = matching("127.0.0.1:9465", _LISTEN, _LISTEN_HINT)
    # How long a record may wait for all its outputs to be acknowledged before the attempt is retried.
    kafka_ack_timeout_ms: int = bounded(30_000, min=100, max=600_000)
    # A worker that stops heartbeating for this long loses its partitions to the others of its group
    # (the broker must allow it: group.min.session.timeout.ms, 6 s by default).
    session_timeout_s: float = bounded(30.0, min=6.0, max=1800.0)


@dataclass(frozen=True)
class OtlpSinkConfig:
    """An OTLP/HTTP (protobuf) backend: Jaeger v2, an OpenTelemetry Collector, any OTLP receiver."""

    # "http": OTLP/HTTP protobuf to endpoint + /v1/<signal>; "grpc": OTLP/gRPC to endpoint as host:port
    # (https:// or a ca_file for TLS).
    protocol: Literal["http", "grpc"] = "http"
    endpoint: str = "http://127.0.0.1:14318"
    # Which clean topics this sink exports (Jaeger takes traces only).
    signals: tuple[str, ...] = ("traces",)
    headers: dict[str, str] = field(default_factory=dict)
    # Header name -> environment variable holding its value (credentials stay out of the config).
    headers_from_env: dict[str, str] = field(default_factory=dict)
    # The tenant travels as this resource attribute (overwriting whatever the data said) ...
    tenant_attribute: str = "tenant.id"
    # ... and, when set, as this request header too (e.g. X-Scope-OrgID for multi-tenant backends).
    tenant_header: str | None = None
    ca_file: str | None = path_field()
    compression: Literal["gzip", "none"] = "gzip"
    timeout_s: float = bounded(10.0, min=0.1, max=600.0)


@dataclass(frozen=True)
class PrometheusSinkConfig:
    """A Prometheus remote-write 1.0 receiver (Prometheus with --web.enable-remote-write-receiver,
    Mimir, Thanos receive, VictoriaMetrics, ...)."""

    endpoint: str = "http://127.0.0.1:9090/api/v1/write"
    headers: dict[str, str] = field(default_factory=dict)
    headers_from_env: dict[str, str] = field(default_factory=dict)
    # The tenant is a "tenant" label on every series, and this resource attribute (overwriting whatever
    # the data said), which lands as a label of target_info; its own setting, not the OTLP sink's.
    tenant_attribute: str = "tenant.id"
    tenant_header: str | None = None
    timeout_s: float = bounded(10.0, min=0.1, max=600.0)


@dataclass(frozen=True)
class ExportBudgetConfig:
    """How many payload bytes a tenant may export through one sink per window (shared by all its replicas)."""

    bytes_per_window: int = bounded(1024 * 1024 * 1024, min=1)
    window_s: float = bounded(60.0, min=1.0, max=86400.0)


@dataclass(frozen=True)
class SinksConfig:
    # /metrics, /healthz, /readyz of a sink process.
    admin_listen: str = matching("127.0.0.1:9466", _LISTEN, _LISTEN_HINT)
    # Exports in flight at once in one sink process.
    concurrency: int = bounded(4, min=1, max=256)
    # Records (envelopes) of one tenant and signal combined into one export, within these limits; a
    # batch leaves when full or when its oldest record has waited batch_max_wait_ms.
    batch_max_records: int = bounded(16, min=1, max=1024)
    batch_max_bytes: int = bounded(4 * 1024 * 1024, min=1024, max=256 * 1024 * 1024)
    batch_max_wait_ms: int = bounded(100, min=0, max=60_000)
    # Retryable failures back off exponentially (with jitter) from initial to max, honouring Retry-After.
    initial_backoff_s: float = bounded(0.5, min=0.01, max=60.0)
    max_backoff_s: float = bounded(30.0, min=0.1, max=3600.0)
    # After this many failures in a row the circuit opens: no calls to the backend for circuit_open_s,
    # then one probe.
    circuit_failure_threshold: int = bounded(5, min=1, max=1000)
    circuit_open_s: float = bounded(10.0, min=0.1, max=3600.0)
    session_timeout_s: float = bounded(30.0, min=6.0, max=1800.0)
    # Per-tenant export budgets (bytes per window, in Redis so every replica of a sink shares them).
    # Tenants without an entry are not limited. Over budget, "hold" waits until the budget refills;
    # "dead_letter" puts the batch in the sink's DLQ topic (to replay later) and moves on.
    budgets: dict[str, ExportBudgetConfig] = field(default_factory=dict)
    budget_policy: Literal["hold", "dead_letter"] = "hold"
    # With "hold": batches a process may keep waiting for their tenant's budget while it goes on
    # exporting other tenants' batches. Beyond this it stops taking new records (Kafka keeps them).
    max_held_batches: int = bounded(64, min=1, max=10_000)
    # How long a sink remembers (in Redis, across its replicas) that the backend accepted a batch, so
    # a batch redelivered after a crash or rebalance is not exported twice. 0 turns this off.
    delivered_ttl_s: float = bounded(3600.0, min=0.0, max=7 * 86400.0)
    otlp: OtlpSinkConfig = field(default_factory=OtlpSinkConfig)
    prometheus: PrometheusSinkConfig = field(default_factory=PrometheusSinkConfig)


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
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    forgery: ForgeryConfig = field(default_factory=ForgeryConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Where this config was read from; relative paths inside it are resolved against its folder.
    source: str = internal_field("<defaults>")


def load_config(path: str, env: Mapping[str, str] | None = None) -> RampartConfig:
    """Read ``path``, apply ``RAMPART__…`` overrides from ``env`` and validate everything.

    Raises ConfigError (one line: key, file or variable, what was expected) on any mistake.
    """
    data = parse_yaml_file(path)
    config = load(RampartConfig, data, path, os.environ if env is None else env)
    check_kafka_security(config.kafka, path)
    return replace(resolve_paths(config, os.path.dirname(os.path.abspath(path))), source=path)


def check_kafka_security(kafka: KafkaConfig, source: str) -> None:
    """Settings that only make sense together: caught at start-up rather than as a failed handshake later."""
    sasl = kafka.security_protocol.startswith("SASL_")
    if sasl and kafka.sasl_mechanism is None:
        raise ConfigError("kafka.sasl_mechanism", source,
                          f"security_protocol {kafka.security_protocol} needs a mechanism: PLAIN, SCRAM-SHA-256, "
                          "SCRAM-SHA-512 or OAUTHBEARER")
    if not sasl and kafka.sasl_mechanism is not None:
        raise ConfigError("kafka.sasl_mechanism", source,
                          f"set, but security_protocol is {kafka.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
    if kafka.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for key in ("sasl_username", "sasl_password"):
            if getattr(kafka, key) is None:
                raise ConfigError(f"kafka.{key}", source, f"required by sasl_mechanism {kafka.sasl_mechanism}")
    if kafka.sasl_mechanism == "OAUTHBEARER":
        for key in ("sasl_oauthbearer_token_endpoint_url", "sasl_oauthbearer_client_id",
                    "sasl_oauthbearer_client_secret"):
            if getattr(kafka, key) is None:
                raise ConfigError(f"kafka.{key}", source, "required by sasl_mechanism OAUTHBEARER")
    if (kafka.ssl_certificate_location is None) != (kafka.ssl_key_location is None):
        raise ConfigError("kafka.ssl_key_location", source,
                          "a client certificate needs both ssl_certificate_location and ssl_key_location")
    if kafka.ssl_certificate_location is not None and not kafka.security_protocol.endswith("SSL"):
        raise ConfigError("kafka.ssl_certificate_location", source,
                          f"set, but security_protocol is {kafka.security_protocol}: use SSL or SASL_SSL")
