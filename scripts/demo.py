"""`make demo`: the main job as far as Rampart is built today.

Creates the signing keys and topics, issues a demo API key, starts a gateway, a fused
validate+scrub+dedup worker and the OTLP sink into Jaeger, and drives a small application
instrumented with the OpenTelemetry SDK through them (traces, metrics and logs over OTLP/HTTP and
OTLP/gRPC; a planted e-mail address to scrub; every span sent twice, over HTTP and over gRPC, for
dedup to catch), printing what reached each topic and Jaeger, until interrupted (or for
DEMO_SECONDS seconds). It stops the processes it started; `make services-down` stops the services.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import TopicPartition
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ingest.apikeys import ApiKeyRegistry
from rampart.config import RampartConfig, load_config
from rampart.kafka import admin_client, consumer
from rampart.keyring import write_key
from rampart.stores import redis_client
from rampart.topics import TopicNames, create_topics
from schemas.envelope import Signal

ROOT = Path(__file__).resolve().parent.parent
CONFIG = os.environ.get("CONFIG", str(ROOT / "config" / "rampart.example.yaml"))
LOGS = ROOT / ".cache" / "logs"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def main() -> int:
    config = load_config(CONFIG)
    keyfile = config.keyring.file
    assert keyfile is not None, "the demo config must name keyring.file"
    if not Path(keyfile).exists():
        write_key(keyfile, "gateway-1", make_signing=True)
        write_key(keyfile, "worker-1", make_signing=False)
        say(f"created the envelope signing key ring {keyfile} (mode 0600)")
    report = create_topics(admin_client(config.kafka, "rampart-demo"), config.topics, config.kafka.max_message_bytes,
                           config.stages.pipeline)
    say(f"topics: {len(report.created)} created, {len(report.existing)} already there "
        f"(prefix {config.topics.prefix!r}, {config.topics.partitions} partitions)")

    registry = ApiKeyRegistry(redis_client(config), config.redis.key_prefix)
    key, token = registry.create("demo", list(Signal), "make demo")
    say(f"issued API key {key.key_id} for tenant 'demo' (all signals)")

    LOGS.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name, args, admin in (
                ("gateway", ["gateway"], config.gateway.admin_listen),
                ("worker", ["worker", "--stages", ",".join(config.stages.pipeline)], config.stages.admin_listen),
                ("otlp sink", ["sink", "otlp"], config.sinks.admin_listen),
                ("prometheus sink", ["sink", "prometheus"], _next_port(config.sinks.admin_listen))):
            log_path = LOGS / f"demo-{name.replace(' ', '-')}.log"
            env = dict(os.environ, RAMPART__SINKS__ADMIN_LISTEN=admin) if "sink" in name else None
            with open(log_path, "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", "rampart.cli", "--config", CONFIG, *args],
                                           stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            started.append(process)
            wait_ready(name, admin, process)
            say(f"{name} running (pid {process.pid}, log {log_path})")
        run_app(config, token)
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        say("stopped the gateway, the worker and the sinks; stop the services with: make services-down")
    return 0


def _next_port(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


def wait_ready(name: str, admin_listen: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"[demo] the {name} exited with {process.returncode}; see {LOGS}")
        try:
            with urllib.request.urlopen(f"http://{admin_listen}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"[demo] the {name} did not become ready in 60 s; see {LOGS}")


def run_app(config: RampartConfig, token: str) -> None:
    http_listen, grpc_listen = config.gateway.http_listen, config.gateway.grpc_listen
    resource = Resource.create({"service.name": "demo-shop", "service.version": "1.0.0"})
    headers = {"authorization": f"Bearer {token}"}
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://{http_listen}/v1/traces", headers=headers), schedule_delay_millis=1000))
    tracer_provider.add_span_processor(BatchSpanProcessor(
        GrpcSpanExporter(endpoint=grpc_listen, insecure=True, headers=headers), schedule_delay_millis=1000))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"http://{http_listen}/v1/metrics", headers=headers),
        export_interval_millis=2000)])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=f"http://{http_listen}/v1/logs", headers=headers), schedule_delay_millis=1000))

    tracer, meter = tracer_provider.get_tracer("demo"), meter_provider.get_meter("demo")
    logger = logger_provider.get_logger("demo")
    orders, latency = meter.create_counter("orders", unit="1"), meter.create_histogram("checkout.duration", unit="s")

    print()
    print("  OTLP/HTTP  http://" + http_listen + "     OTLP/gRPC  " + grpc_listen)
    print(f"  API key    {token}")
    print("  try:       OTEL_EXPORTER_OTLP_ENDPOINT=http://" + http_listen +
          f" OTEL_EXPORTER_OTLP_HEADERS='authorization=Bearer%20{token}' <your app>")
    print(f"  metrics    gateway http://{config.gateway.admin_listen}/metrics   worker "
          f"http://{config.stages.admin_listen}/metrics   sink http://{config.sinks.admin_listen}/metrics")
    print("  traces     Jaeger UI http://127.0.0.1:16686 (service demo-shop; the user.email attribute arrives "
          "as [REDACTED])")
    print("  metrics    Prometheus http://127.0.0.1:9090 (try orders_total or checkout_duration_seconds_bucket)\n")

    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or None
    started, rng = time.monotonic(), random.Random(7)
    topics = TopicNames(config.topics.prefix)
    try:
        while seconds is None or time.monotonic() - started < seconds:
            for _ in range(20):
                with tracer.start_as_current_span("POST /checkout") as span:
                    span.set_attribute("user.email", "jane@example.com")  # scrubbing will remove it
                    with tracer.start_as_current_span("SELECT orders"):
                        pass
                    duration = rng.lognormvariate(-3, 0.5)
                    latency.record(duration, {"route": "/checkout"})
                    orders.add(1, {"region": rng.choice(["eu", "us"])})
                    logger.emit(body=f"order placed in {duration * 1000:.0f} ms", severity_number=SeverityNumber.INFO)
            time.sleep(2)
            counts = {kind: sum(records(config, getattr(topics, kind)(s)) for s in Signal)
                      for kind in ("raw", "clean", "rejected", "quarantine")}
            scrubbed = metric(config.stages.admin_listen, "rampart_stage_processor_events_total", 'processor="scrub"')
            exported = metric(config.sinks.admin_listen, "rampart_sink_exported_items_total", "")
            points = metric(_next_port(config.sinks.admin_listen), "rampart_sink_exported_items_total", "")
            lag = sum(metric(admin, "rampart_consumer_lag_records", "") for admin in (
                config.stages.admin_listen, config.sinks.admin_listen, _next_port(config.sinks.admin_listen)))
            print(f"[demo] {time.monotonic() - started:5.0f}s  batches: raw {counts['raw']}  clean {counts['clean']}  "
                  f"rejected {counts['rejected']}  quarantined {counts['quarantine']}   scrub matches {scrubbed}   "
                  f"spans to Jaeger {exported}   metric points to Prometheus {points}   lag {lag}", flush=True)
    except KeyboardInterrupt:
        print()
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        logger_provider.shutdown()


def metric(admin_listen: str, name: str, label: str) -> int:
    """The sum of a counter over the series whose labels contain ``label``, from a process's /metrics."""
    try:
        with urllib.request.urlopen(f"http://{admin_listen}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and label in line and "screened" not in line))


def records(config: RampartConfig, topic: str) -> int:
    c = consumer(config.kafka, "rampart-demo", "rampart-demo-counter")
    try:
        metadata = c.list_topics(topic, timeout=5).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in metadata.partitions)
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
