"""The ``rampart`` command: one entry point, a subcommand per role or operator task."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import redis
import uvloop
from confluent_kafka import KafkaException

from ingest.apikeys import ApiKeyRegistry
from ingest.server import GatewayStartupError, run_gateway
from processors.runtime import WorkerSetupError, run_worker
from processors.scrub import ScrubSetupError
from rampart.audit import AuditLog
from rampart.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoggingConfig,
    RampartConfig,
    load_config,
)
from rampart.kafka import admin_client, producer
from rampart.keyring import KeyRing, KeyringError, load_keyring, write_key
from rampart.logs import setup_logging
from rampart.quarantine import (
    NotReleasable,
    QuarantineError,
    describe,
    list_records,
    parse_since,
    read_record,
    release,
    summarise,
)
from rampart.quarantine import as_json as quarantine_json
from rampart.quarantine import table as quarantine_table
from rampart.release import ReleaseError, generate_operator_key, load_operator_key
from rampart.settings import redacted
from rampart.stores import redis_client
from rampart.topics import TopicNames, create_topics
from schemas.envelope import Signal
from sinks.otlp import SinkSetupError
from sinks.replay import replay
from sinks.runtime import run_sink

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, RampartConfig, Mapping[str, str]], int]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    path = args.config or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    long_running = args.handler in (_gateway, _worker, _sink)
    setup_logging(config.logging if long_running else LoggingConfig(level="WARNING", format="text"))
    handler: Handler = args.handler
    return handler(args, config, env)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rampart",
        description="Rampart: a secure, horizontally scalable OpenTelemetry pipeline on Apache Kafka. "
                    "Gateways authenticate and sign OTLP batches into Kafka; workers validate, scrub, "
                    "deduplicate and screen them; sinks export them to Jaeger, Prometheus or any OTLP backend.",
        epilog=f"Configuration: --config PATH, else ${CONFIG_ENV_VAR}, else {DEFAULT_CONFIG_PATH}. "
               "Any key can be overridden with RAMPART__SECTION__KEY=value.",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML configuration file")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    config_cmd = sub.add_parser("config", help="check and show the effective configuration")
    config_sub = config_cmd.add_subparsers(title="config commands", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate the config and print it with secrets hidden")
    check.set_defaults(handler=_config_check)

    topics = sub.add_parser("topics", help="create or list the pipeline's Kafka topics")
    topics_sub = topics.add_subparsers(title="topics commands", metavar="ACTION", required=True)
    create = topics_sub.add_parser(
        "create", help="create every missing topic (idempotent)",
        description="Create the raw, clean, rejected, quarantine, dead-letter and audit topics with "
                    "topics.partitions partitions. Topics that exist already are left untouched.")
    create.add_argument("--partitions", type=int, help="override topics.partitions for new topics")
    create.set_defaults(handler=_topics_create)
    listing = topics_sub.add_parser("list", help="list the pipeline's topics and their partition counts")
    listing.set_defaults(handler=_topics_list)

    keys = sub.add_parser("keys", help="manage the keys that sign envelopes and encrypt unscrubbed payloads")
    keys_sub = keys.add_subparsers(title="keys commands", metavar="ACTION", required=True)
    gen = keys_sub.add_parser(
        "generate", help="add a new random key to a key file",
        description="Add a new 256-bit random key to the key file (created with mode 0600). The first key, "
                    "or any key given --signing, becomes the signing key; the others stay verify-only, "
                    "which is how keys rotate without downtime. With --encryption the key is an AES-256 "
                    "payload key instead (for keyring.encrypt_unscrubbed): the first one, or one given "
                    "--signing, encrypts new payloads; all of them decrypt.")
    gen.add_argument("--id", required=True, dest="key_id", help="key id, e.g. gateway-2026-11")
    gen.add_argument("--file", help="key file (default: keyring.file from the config)")
    gen.add_argument("--signing", action="store_true",
                     help="make the new key the one in use (signing, or encrypting with --encryption)")
    gen.add_argument("--encryption", action="store_true", help="an AES-256-GCM payload encryption key")
    gen.set_defaults(handler=_keys_generate)
    klist = keys_sub.add_parser("list", help="list key ids, their roles and fingerprints (never the keys)")
    klist.set_defaults(handler=_keys_list)
    operator = keys_sub.add_parser(
        "operator", help="make an operator's release key (Ed25519) for `quarantine release`",
        description="Write a new Ed25519 private key for one operator to --out (mode 0600, never overwritten) "
                    "and print its public half. Add that line under keyring.release_keys in the pipeline's "
                    "config: a quarantined batch comes back only with a release signed by a key listed there, "
                    "so the services' own envelope keys cannot release anything. Keep the private key with the "
                    "operator, not on any Rampart host.")
    operator.add_argument("--id", required=True, dest="key_id", help="operator key id, e.g. alice-2026")
    operator.add_argument("--out", required=True, help="where to write the private key, e.g. ~/.rampart/alice.key")
    operator.set_defaults(handler=_keys_operator)

    _add_gateway(sub)
    _add_pipeline_roles(sub)
    _add_quarantine(sub)
    return parser


def _add_quarantine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quarantine = sub.add_parser(
        "quarantine", help="review quarantined batches and release the ones judged genuine",
        description="The pipeline sets aside, on <prefix>.quarantine.<signal>, records it cannot trust or read "
                    "(bad signature, undecodable, stages skipped) and batches the forgery stage suspects. Each "
                    "record keeps the input exactly as the stage received it, with the reason in its headers. "
                    "Records are named <signal>/<partition>/<offset>.")
    q_sub = quarantine.add_subparsers(title="quarantine commands", metavar="ACTION", required=True)
    q_list = q_sub.add_parser(
        "list", help="list quarantined records (id, time, tenant, principal, reason, score)",
        description="Read the quarantine topics up to their current end (nothing is consumed or committed). "
                    "Tenant and principal are shown only for records whose signature verifies with the key ring; "
                    "others show (unverified).")
    q_list.add_argument("--signal", choices=[*[s.value for s in Signal], "all"], default="all",
                        help="which quarantine topic to read (default: all three)")
    q_list.add_argument("--reason", help="only this reason, e.g. forgery_suspected or bad_signature")
    q_list.add_argument("--tenant", help="only this tenant (verified records only)")
    q_list.add_argument("--since", help="only records set aside since: 30m, 2h, 7d or an ISO 8601 time")
    q_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q_list.set_defaults(handler=_quarantine_list)
    q_show = q_sub.add_parser(
        "show", help="show one record's metadata and a summary of its payload",
        description="Print the record's metadata, whether and why it is (not) releasable, and a summary of its "
                    "payload: items per service and per span/metric name, errors, attribute keys. Attribute values "
                    "are printed only with --values, and never for a payload that was encrypted (set aside "
                    "before scrub). Payloads of records that do not verify are not decoded.")
    q_show.add_argument("record_id", metavar="ID", help="as `quarantine list` shows it, e.g. traces/0/12")
    q_show.add_argument("--values", action="store_true",
                        help="also print up to 5 attribute values per key (they may hold personal data)")
    q_show.add_argument("--json", action="store_true", help="print JSON")
    q_show.set_defaults(handler=_quarantine_show)
    q_release = q_sub.add_parser(
        "release", help="send a quarantined batch through the pipeline again, unflagged; audited",
        description="Re-publish the batch where the first stage it has not passed reads (from its signed list "
                    "of stages), re-signed with this command's key ring and marked released by you (signed "
                    "envelope attributes rampart.released_by and rampart.release_reason, which no gateway "
                    "sets) and signed with your operator release key (`rampart keys operator`; its public half "
                    "must be in keyring.release_keys), so the forgery stage lets it pass unscreened. Only "
                    "batches the forgery stage set aside (forgery_suspected) can be released: a record that "
                    "failed its signature, could not be read or skipped stages cannot be made trustworthy by a "
                    "release. Needs the key ring "
                    "with a signing key, Kafka and Redis (each release is remembered there); writes a "
                    "quarantine_released audit event.")
    q_release.add_argument("record_id", metavar="ID", help="as `quarantine list` shows it, e.g. traces/0/12")
    q_release.add_argument("--reason", required=True, help="why it is genuine (kept in the batch and the audit)")
    q_release.add_argument("--force", action="store_true", help="release a batch that was released before")
    q_release.add_argument("--operator-key", default=os.environ.get("RAMPART_OPERATOR_KEY_FILE"),
                           help="your operator release key file (default: $RAMPART_OPERATOR_KEY_FILE)")
    q_release.set_defaults(handler=_quarantine_release)


def _add_gateway(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The gateway and the management of its API keys."""
    gateway = sub.add_parser(
        "gateway", help="run an OTLP/HTTP + OTLP/gRPC ingest gateway",
        description="Accept OTLP over HTTP (gateway.http_listen, default 127.0.0.1:4318) and gRPC "
                    "(gateway.grpc_listen, default 127.0.0.1:4317); authenticate each request by API key, "
                    "rate-limit its tenant, sign the batch and answer only once Kafka holds it. Serves "
                    "/metrics, /healthz and /readyz on gateway.admin_listen. Stops cleanly on SIGTERM.")
    gateway.set_defaults(handler=_gateway)
    _add_apikeys(sub)


def _add_apikeys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikeys = sub.add_parser("apikeys", help="create, list and revoke ingest API keys")
    apikeys_sub = apikeys.add_subparsers(title="apikeys commands", metavar="ACTION", required=True)
    ak_create = apikeys_sub.add_parser(
        "create", help="issue a key for one tenant and a set of signals (printed once)",
        description="Issue an ingest API key. The key is printed once and stored only as a SHA-256 hash in "
                    "Redis; every gateway picks it up within gateway.apikey_refresh_interval_s.")
    ak_create.add_argument("--tenant", required=True, help="tenant the key's data belongs to")
    ak_create.add_argument("--signals", default="traces,metrics,logs",
                           help="comma-separated signals the key may send (default: all three)")
    ak_create.add_argument("--name", default="", help="a note for operators, e.g. the owning service")
    ak_create.set_defaults(handler=_apikeys_create)
    ak_list = apikeys_sub.add_parser("list", help="list keys (ids, tenants, signals, state; never secrets)")
    ak_list.set_defaults(handler=_apikeys_list)
    ak_revoke = apikeys_sub.add_parser("revoke", help="revoke a key on every gateway within seconds")
    ak_revoke.add_argument("key_id", help="the key id shown by `apikeys list`")
    ak_revoke.set_defaults(handler=_apikeys_revoke)


def _add_pipeline_roles(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker", help="run stream stages (validate, scrub, dedup) as a consumer group",
        description="Consume envelopes, verify their signatures, run the given processors on each batch, "
                    "re-sign and produce the result, committing offsets only after Kafka acknowledged "
                    "every output. Stages are consecutive names from stages.pipeline; one name runs one "
                    "stage as its own consumer group, several run fused in one process (one decode, one "
                    "encode). Start more processes with the same --stages to share the partitions.")
    worker.add_argument("--stages", required=True, help="comma-separated, e.g. validate or validate,scrub,dedup")
    worker.add_argument("--signals", default="traces,metrics,logs", help="signals to process (default: all)")
    worker.add_argument("--input", metavar="TOPIC", help="read this topic instead of the pipeline's "
                        "('{signal}' stands for the signal), for processors joining as consumers of any topic")
    worker.add_argument("--output", metavar="TOPIC", help="write this topic instead of the pipeline's "
                        "(with --input)")
    worker.set_defaults(handler=_worker)

    sink = sub.add_parser(
        "sink", help="export the clean topics to a backend (otlp: Jaeger or any OTLP/HTTP receiver)",
        description="Consume the clean topics as consumer group <prefix>.sink.<name>, verify every envelope, "
                    "put the tenant on every resource and export to the backend, retrying with backoff "
                    "(honouring Retry-After, with a circuit breaker) until it accepts; batches it refuses for "
                    "good go to <prefix>.dlq.<name> with its answer. Offsets are committed only then. "
                    "Configured under sinks: in the config file.")
    sink.add_argument("name", choices=["otlp", "prometheus"],
                      help="otlp: OTLP/HTTP (Jaeger, collectors); prometheus: remote write for metrics")
    sink.set_defaults(handler=_sink)

    dlq = sub.add_parser("dlq", help="work with a sink's dead-letter topic")
    dlq_sub = dlq.add_subparsers(title="dlq commands", metavar="ACTION", required=True)
    dlq_replay = dlq_sub.add_parser(
        "replay", help="send dead-lettered batches to the backend again",
        description="Re-export the batches in <prefix>.dlq.<sink> (up to its end when the command starts) "
                    "through the sink, with the usual retries, committing each once the backend accepts it. "
                    "A batch refused again stops the replay, so nothing is skipped.")
    dlq_replay.add_argument("--sink", default="otlp", choices=["otlp", "prometheus"], help="whose DLQ topic to replay")
    dlq_replay.set_defaults(handler=_dlq_replay)


def _gateway(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    collect_garbage_less_often()
    try:
        uvloop.run(run_gateway(config, env))  # libuv's loop: less CPU per request than asyncio's own
    except GatewayStartupError as exc:
        print(f"rampart gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def collect_garbage_less_often() -> None:
    """For the long-running services: the cycle collector's young generation is scanned after every
    700 net allocations by default, which for a gateway is every request or two (4 % of its CPU at
    100-span requests). Every 20,000 costs a little memory held in cyclic garbage a little longer.
    What was built before serving (modules, config) is frozen out of the scans altogether."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _worker(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    try:
        signals = [Signal(s.strip()) for s in args.signals.split(",") if s.strip()]
    except ValueError:
        print(f"rampart worker: --signals takes traces, metrics, logs; got {args.signals!r}", file=sys.stderr)
        return EXIT_USAGE
    if (args.input is None) != (args.output is None):
        print("rampart worker: --input and --output go together", file=sys.stderr)
        return EXIT_USAGE
    collect_garbage_less_often()
    try:
        run_worker(config, env, stages, signals, args.input, args.output)
    except (WorkerSetupError, ScrubSetupError) as exc:
        print(f"rampart worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _sink(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    collect_garbage_less_often()
    try:
        run_sink(config, env, args.name)
    except SinkSetupError as exc:
        print(f"rampart sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _dlq_replay(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        report = replay(config, env, args.sink)
    except (SinkSetupError, KeyringError) as exc:
        print(f"rampart dlq replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaException as exc:
        print(f"rampart dlq replay: Kafka did not answer: {exc.args[0]}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{report.delivered} batches delivered, {report.unreadable} unreadable left in place")
    if report.refused:
        print(f"rampart dlq replay: stopped: the backend refused a batch again: {report.refused}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _review_keyring(config: RampartConfig, env: Mapping[str, str], command: str) -> KeyRing | None:
    """The key ring to verify records with; without one, records are listed as unverified."""
    try:
        return load_keyring(config.keyring, env)
    except KeyringError as exc:
        print(f"rampart quarantine {command}: no key ring ({exc}): records cannot be verified", file=sys.stderr)
        return None


def _quarantine_list(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    signals = list(Signal) if args.signal == "all" else [Signal(args.signal)]
    try:
        since = parse_since(args.since) if args.since else None
        records = list_records(config, _review_keyring(config, env, "list"), signals, reason=args.reason,
                               tenant=args.tenant, since_s=since)
    except ValueError as exc:
        print(f"rampart quarantine list: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (QuarantineError, KafkaException) as exc:
        print(f"rampart quarantine list: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(quarantine_json(records) if args.json else "\n".join(quarantine_table(records)))
    return EXIT_OK


def _quarantine_show(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    keyring = _review_keyring(config, env, "show")
    try:
        record = read_record(config, keyring, args.record_id)
    except (QuarantineError, KafkaException) as exc:
        print(f"rampart quarantine show: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    summary = summarise(record, keyring, args.values)
    if args.json:
        print(json.dumps({**record.metadata(), "payload": summary}, indent=2))
    else:
        print(describe(record, summary))
    return EXIT_OK


def _quarantine_release(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    if not args.operator_key:
        print("rampart quarantine release: a release is signed with your operator key: pass --operator-key FILE "
              "or set RAMPART_OPERATOR_KEY_FILE (make one with `rampart keys operator`)", file=sys.stderr)
        return EXIT_USAGE
    try:
        operator_key = load_operator_key(args.operator_key)
        keyring = load_keyring(config.keyring, env)
        done = release(config, keyring, args.record_id, reason=args.reason, operator_key=operator_key,
                       user=_operator(), force=args.force)
    except ReleaseError as exc:
        print(f"rampart quarantine release: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotReleasable as exc:
        print(f"rampart quarantine release: not releasable: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyringError as exc:
        print(f"rampart quarantine release: releasing re-signs the batch and needs the key ring: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except (QuarantineError, KafkaException) as exc:
        print(f"rampart quarantine release: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"released {done.record_id} (batch {done.batch_id}, tenant {done.tenant}) to {done.topic}")
    return EXIT_OK


def _registry(config: RampartConfig) -> ApiKeyRegistry:
    return ApiKeyRegistry(redis_client(config), config.redis.key_prefix)


def _apikeys_create(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        signals = [Signal(s.strip()) for s in args.signals.split(",") if s.strip()]
        key, token = _registry(config).create(args.tenant, signals, args.name)
    except ValueError as exc:
        print(f"rampart apikeys create: {exc} (signals are traces, metrics, logs)", file=sys.stderr)
        return EXIT_USAGE
    except redis.RedisError as exc:
        print(f"rampart apikeys create: Redis at {config.redis.url} did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    # Printed before anything else can fail: the key exists now and is never shown again.
    print(f"key id:  {key.key_id}\ntenant:  {key.tenant}\nsignals: {','.join(sorted(s.value for s in key.signals))}")
    print(f"API key (shown once, store it now): {token}", flush=True)
    _operator_audit(config, "apikey_created", key.tenant, key.key_id)
    return EXIT_OK


def _operator_audit(config: RampartConfig, event: str, tenant: str, key_id: str) -> None:
    """Record an operator action on the audit topic; say so plainly if Kafka cannot take it."""
    audit_producer = producer(config.kafka, "rampart-cli", **{"delivery.timeout.ms": 10_000})
    audit = AuditLog(audit_producer, TopicNames(config.topics.prefix).audit(), "cli", socket.gethostname())
    audit.emit(event, tenant=tenant, principal=key_id, operator=_operator())
    if audit_producer.flush(15) or audit.failures:
        print(f"warning: the audit event {event} did not reach Kafka at {config.kafka.bootstrap_servers}",
              file=sys.stderr)


def _operator() -> str:
    """Who ran the command; containers may run as a uid without a passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _apikeys_list(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        table = _registry(config).load()
    except redis.RedisError as exc:
        print(f"rampart apikeys list: Redis at {config.redis.url} did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{'KEY ID':18} {'TENANT':20} {'SIGNALS':22} {'STATE':8} NAME")
    for key in sorted(table.keys(), key=lambda k: (k.tenant, k.created_at)):
        state = "revoked" if key.revoked_at else "active"
        print(f"{key.key_id:18} {key.tenant:20} {','.join(sorted(s.value for s in key.signals)):22} {state:8} "
              f"{key.name}")
    return EXIT_OK


def _apikeys_revoke(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        key = _registry(config).revoke(args.key_id)
    except KeyError:
        print(f"rampart apikeys revoke: no key with id {args.key_id!r}", file=sys.stderr)
        return EXIT_FAILURE
    except redis.RedisError as exc:
        print(f"rampart apikeys revoke: Redis at {config.redis.url} did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    _operator_audit(config, "apikey_revoked", key.tenant, key.key_id)
    print(f"revoked {key.key_id} (tenant {key.tenant}); gateways stop accepting it within "
          f"{config.gateway.apikey_refresh_interval_s:g}s")
    return EXIT_OK


def _config_check(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    print(f"config OK: {config.source}")
    print(json.dumps(redacted(config), indent=2))
    return EXIT_OK


def _topics_create(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:

    topics_config = config.topics
    if args.partitions is not None:
        if args.partitions < 1:
            print("rampart topics create: --partitions must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        topics_config = replace(topics_config, partitions=args.partitions)
    admin = admin_client(config.kafka, "rampart-topics")
    try:
        report = create_topics(admin, topics_config, config.kafka.max_message_bytes, config.stages.pipeline)
    except KafkaException as exc:
        print(f"rampart topics create: Kafka at {config.kafka.bootstrap_servers} refused or did not answer: "
              f"{exc.args[0]}", file=sys.stderr)
        return EXIT_FAILURE
    for name in report.created:
        print(f"created  {name} ({topics_config.partitions} partitions)")
    for name in report.existing:
        print(f"exists   {name}")
    print(f"{len(report.created)} topics created, {len(report.existing)} already existed "
          f"on {config.kafka.bootstrap_servers}")
    return EXIT_OK


def _topics_list(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:

    try:
        metadata = admin_client(config.kafka, "rampart-topics").list_topics(timeout=10)
    except KafkaException as exc:
        print(f"rampart topics list: Kafka at {config.kafka.bootstrap_servers} did not answer: {exc.args[0]}",
              file=sys.stderr)
        return EXIT_FAILURE
    for name in TopicNames(config.topics.prefix).all(config.topics.dlq_sinks, config.stages.pipeline):
        topic = metadata.topics.get(name)
        state = f"{len(topic.partitions)} partitions" if topic is not None and not topic.error else "missing"
        print(f"{name:40} {state}")
    return EXIT_OK


def _keys_generate(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    path = args.file or config.keyring.file
    if path is None:
        print("rampart keys generate: no key file: pass --file PATH or set keyring.file in "
              f"{config.source}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ring = write_key(path, args.key_id, make_signing=args.signing, encryption=args.encryption)
    except KeyringError as exc:
        print(f"rampart keys generate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.encryption:
        print(f"added encryption key {args.key_id!r} to {path}; new payloads are encrypted with "
              f"{ring.encryption_key_id!r}")
    else:
        print(f"added key {args.key_id!r} to {path}; signing key is now {ring.signing_key_id!r}")
    return EXIT_OK


def _keys_operator(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        key = generate_operator_key(os.path.expanduser(args.out), args.key_id)
    except (ReleaseError, OSError) as exc:
        print(f"rampart keys operator: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote operator key {key.key_id!r} to {args.out} (keep it with the operator only)")
    print("add this under keyring.release_keys in the pipeline's config:")
    print(f"  {key.key_id}: {key.public_text()}")
    return EXIT_OK


def _keys_list(args: argparse.Namespace, config: RampartConfig, env: Mapping[str, str]) -> int:
    try:
        ring = load_keyring(config.keyring, env)
    except KeyringError as exc:
        print(f"rampart keys list: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for info in ring.describe():
        role = ("signing" if info.signing else "verify ") if info.purpose == "signature" else \
            ("encrypt" if info.signing else "decrypt")
        print(f"{info.key_id:32} {role}  sha256:{info.fingerprint}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
