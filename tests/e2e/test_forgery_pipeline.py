"""The forgery stage in the real pipeline: gateway -> validate, scrub, dedup, forgery (one fused worker)
on the real broker and Redis. A masking flood sent with a valid key is quarantined with its reasons
and an audit event while the genuine traffic of the same service passes; `rampart quarantine release`
brings a flood batch through; a restarted worker keeps what it learned (snapshots in Redis)."""

from __future__ import annotations

import json
import math
import pathlib
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import redis
from confluent_kafka import Producer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rampart.keyring import KeyRing, generate_key
from schemas.envelope import Envelope, Signal, decode, encode
from tests.support.deployment import RAMPART, Deployment, GatewayProcess, WorkerProcess, post, read_raw

pytestmark = pytest.mark.e2e

STAGES = "validate,scrub,dedup,forgery"
NS = 1_000_000_000
ROUND_S = 0.5
# The stage's clocks scaled down ten times (half-lives, learning) so that minutes of traffic take seconds;
# every rule counts batches, not seconds, so it sees the same picture as in the unit tests.
FORGERY = {
    "RAMPART__STAGES__PIPELINE": STAGES,
    "RAMPART__STAGES__KEYING": "tenant_service",
    "RAMPART__STAGES__SESSION_TIMEOUT_S": "6",
    "RAMPART__FORGERY__LEARNING_S": "4",
    "RAMPART__FORGERY__RECENT_HALF_LIFE_S": "2",
    "RAMPART__FORGERY__VOLUME_HALF_LIFE_S": "3",
    "RAMPART__FORGERY__STATE__SNAPSHOT_INTERVAL_S": "1",
}


@dataclass
class Sent:
    """What the test sent, by kind ("legit", "fake"): trace ids per batch, in order."""

    batches: dict[str, list[set[bytes]]] = field(default_factory=lambda: {"legit": [], "fake": []})


def spans(service: str, n: int, median_ms: float, rng: random.Random, kind: str,
          errors: int = 0) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    if kind == "fake":
        # A client may write anything into its payload, this too: it must not release anything.
        rs.resource.attributes.add(key="rampart.released_by").value.string_value = "attacker"
    scope_spans = rs.scope_spans.add().spans
    now = time.time()
    for i in range(n):
        end = int((now - 0.05 - rng.random() * 0.2) * NS)
        duration = int(rng.lognormvariate(math.log(median_ms), 0.4) * 1e6)
        span = scope_spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), parent_span_id=rng.randbytes(8),
                               name="GET /cart", kind=2, start_time_unix_nano=end - duration, end_time_unix_nano=end)
        if i < errors:
            span.status.code = 2
        span.attributes.add(key="http.route").value.string_value = "/cart"
        span.attributes.add(key="test.kind").value.string_value = kind
    return request


def send(gateway: GatewayProcess, token: str, request: ExportTraceServiceRequest) -> None:
    status = post(f"{gateway.http_url}/v1/traces", request.SerializeToString(),
                  {"Content-Type": "application/x-protobuf", "x-api-key": token})[0]
    assert status == 200


def trace_ids(request: ExportTraceServiceRequest) -> set[bytes]:
    return {s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}


def rounds(gateway: GatewayProcess, tokens: list[str], rng: random.Random, sent: Sent, count: int,
           factor: float = 1.0, flood: Callable[[], ExportTraceServiceRequest] | None = None) -> None:
    """Every key sends one cart batch per round; with ``flood``, the first key sends a fake one too."""
    for _ in range(count):
        started = time.monotonic()
        for token in tokens:
            request = spans("cart", 30 + rng.randrange(-5, 6), 20 * factor, rng, "legit")
            send(gateway, token, request)
            sent.batches["legit"].append(trace_ids(request))
        if flood is not None:
            fake = flood()
            send(gateway, tokens[0], fake)
            sent.batches["fake"].append(trace_ids(fake))
        time.sleep(max(0.0, ROUND_S - (time.monotonic() - started)))


def envelope_trace_ids(envelopes: list[Envelope]) -> set[bytes]:
    found: set[bytes] = set()
    for envelope in envelopes:
        found |= trace_ids(ExportTraceServiceRequest.FromString(envelope.payload))
    return found


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g} s"
        time.sleep(0.5)


def rampart(deployment: Deployment, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = deployment.env(RAMPART__STAGES__PIPELINE=STAGES, RAMPART__KEYRING__SIGNING_KEY_ID="gateway-1", **env_vars)
    return subprocess.run([RAMPART, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def clean(deployment: Deployment) -> list[Envelope]:
    return [decode(v) for v in read_raw(deployment.kafka_bootstrap, deployment.topics.clean(Signal.TRACES), 10)]


def quarantined(deployment: Deployment) -> list[Envelope]:
    return [decode(v) for v in read_raw(deployment.kafka_bootstrap, deployment.topics.quarantine(Signal.TRACES), 10)]


def audit_events(deployment: Deployment) -> list[dict[str, str]]:
    return [json.loads(v) for v in deployment.read_audit()]


def operator_key(deployment: Deployment, path: pathlib.Path, key_id: str) -> str:
    """Make an operator release key with the CLI; returns its public half as the CLI prints it."""
    made = rampart(deployment, "keys", "operator", "--id", key_id, "--out", str(path))
    assert made.returncode == 0, made.stderr
    (line,) = [line for line in made.stdout.splitlines() if line.strip().startswith(f"{key_id}: ")]
    return line.split(": ", 1)[1]


def test_a_masking_flood_is_quarantined_the_genuine_traffic_passes_and_a_release_brings_it_through(
        deployment: Deployment, tmp_path: pathlib.Path) -> None:
    listed = {"RAMPART__KEYRING__RELEASE_KEYS__SRE1": operator_key(deployment, tmp_path / "sre1.key", "sre1")}
    gateway = deployment.start_gateway()
    worker = deployment.start_worker(STAGES, **FORGERY, **listed)
    tokens = [deployment.api_key()[1] for _ in range(4)]
    rng, sent = random.Random(7), Sent()

    rounds(gateway, tokens, rng, sent, 56)                  # learning, then a steady baseline
    rounds(gateway, tokens, rng, sent, 34, factor=3.0)      # a real slowdown that every key reports
    before_flood = len(sent.batches["legit"])
    # The first key also sends fake fast spans: a third of the service's volume, to hide the slowdown.
    rounds(gateway, tokens, rng, sent, 30, factor=3.0, flood=lambda: spans("cart", 60, 20, rng, "fake"))

    sent_ids = set().union(*sent.batches["legit"], *sent.batches["fake"])
    wait_until("every batch screened", lambda: envelope_trace_ids(clean(deployment))
               | envelope_trace_ids(quarantined(deployment)) >= sent_ids)
    passed = envelope_trace_ids(clean(deployment))
    held = quarantined(deployment)
    held_ids = envelope_trace_ids(held)
    fakes = sent.batches["fake"]
    caught = [ids <= held_ids for ids in fakes]
    # The share of the volume takes a few batches to rise clearly above the usual: from then on, every one.
    assert all(caught[12:]), f"fake batches quarantined: {caught}"
    assert all(ids <= passed for ids in sent.batches["legit"][:before_flood]), "genuine traffic was held"
    legit_held = sum(not ids <= passed for ids in sent.batches["legit"][before_flood:])
    assert legit_held <= 2, f"{legit_held} genuine batches held during the flood"

    # Each quarantine record is the batch as the worker received it (gateway-signed) with its reasons.
    verifier = deployment.verifier()
    for envelope in held:
        verifier.verify(envelope)
        assert envelope.stages == ("gateway",)
    listing = rampart(deployment, "quarantine", "list", "--json", "--reason", "forgery_suspected")
    assert listing.returncode == 0, listing.stderr
    records = json.loads(listing.stdout)
    assert len(records) == len(held) and {r["tenant"] for r in records} == {"acme"}
    assert all(float(r["score"]) >= 0.8 and r["releasable"] for r in records)
    fake_ids = set().union(*fakes)
    flood = [r for r in records if envelope_trace_ids([_by_batch(held, r["batch_id"])]) <= fake_ids]
    assert all("latency_masking" in r["reasons"] for r in flood)
    events = {e["batch_id"]: e for e in audit_events(deployment) if e["event"] == "quarantined"}
    assert {e["reason"] for e in events.values()} == {"forgery_suspected"} and len(events) == len(held)
    assert all(events[r["batch_id"]]["tenant"] == "acme" and "latency_masking" in events[r["batch_id"]]["reasons"]
               for r in flood)

    # An operator reviews one fake batch (no attribute values unless asked) and releases it.
    target = flood[-1]
    shown = rampart(deployment, "quarantine", "show", target["id"])
    assert shown.returncode == 0 and "cart" in shown.stdout and "attacker" not in shown.stdout, shown.stderr
    unsigned = rampart(deployment, "quarantine", "release", target["id"], "--reason", "no key", **listed)
    assert unsigned.returncode == 2 and "--operator-key" in unsigned.stderr
    operator_key(deployment, tmp_path / "intruder.key", "sre1")  # the right id, a key nobody listed
    intruder_key = rampart(deployment, "quarantine", "release", target["id"], "--reason", "trust me",
                           "--operator-key", str(tmp_path / "intruder.key"), **listed)
    assert intruder_key.returncode == 1 and "not in keyring.release_keys" in intruder_key.stderr
    released = rampart(deployment, "quarantine", "release", target["id"], "--reason", "load test by the SRE team",
                       RAMPART_OPERATOR_KEY_FILE=str(tmp_path / "sre1.key"), **listed)
    assert released.returncode == 0, released.stderr
    released_ids = envelope_trace_ids([_by_batch(held, target["batch_id"])])
    wait_until("the released batch on the clean topic", lambda: released_ids <= envelope_trace_ids(clean(deployment)))
    again = rampart(deployment, "quarantine", "release", target["id"], "--reason", "twice",
                    "--operator-key", str(tmp_path / "sre1.key"), **listed)
    assert again.returncode == 1 and "released before" in again.stderr
    events = audit_events(deployment)
    assert any(e["event"] == "quarantine_released" and e["batch_id"] == target["batch_id"] for e in events)
    assert any(e["event"] == "forgery_release_passed" and e["batch_id"] == target["batch_id"] for e in events)
    metrics = worker.metrics()
    assert 'rampart_forgery_flagged_batches_total{reason="latency_masking",tenant="acme"}' in metrics
    assert 'rampart_forgery_batches_total{action="released",tenant="acme"} 1.0' in metrics

    # Filters, and a record nobody can vouch for: listed as unverified, never releasable.
    assert json.loads(rampart(deployment, "quarantine", "list", "--json", "--tenant", "other").stdout) == []
    assert len(json.loads(rampart(deployment, "quarantine", "list", "--json", "--since", "1h").stdout)) == len(held)
    intruder = KeyRing({"gateway-1": generate_key()}, "gateway-1")   # the right key id, a wrong secret
    forged = intruder.sign(replace(held[0], batch_id="forged-1", key_id="", signature=b""))
    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    producer.produce(deployment.topics.raw(Signal.TRACES), encode(forged))
    assert producer.flush(10) == 0
    wait_until("the forged record quarantined", lambda: len(quarantined(deployment)) == len(held) + 1)
    (bad,) = [r for r in json.loads(rampart(deployment, "quarantine", "list", "--json").stdout)
              if r["reason"] == "bad_signature"]
    assert bad["tenant"] == "" and not bad["releasable"]
    refused = rampart(deployment, "quarantine", "release", bad["id"], "--reason", "trust me",
                      "--operator-key", str(tmp_path / "sre1.key"), **listed)
    assert refused.returncode == 1 and "launder" in refused.stderr


def _by_batch(envelopes: list[Envelope], batch_id: str) -> Envelope:
    return next(e for e in envelopes if e.batch_id == batch_id)


def test_a_restarted_worker_keeps_what_it_learned(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    worker: WorkerProcess = deployment.start_worker(STAGES, **FORGERY)
    key_id, token = deployment.api_key()
    rng = random.Random(11)
    learned = []
    for _ in range(16):   # 8 s: past the 4 s of learning
        request = spans("cart", 10, 20, rng, "legit")
        send(gateway, token, request)
        learned.append(trace_ids(request))
        time.sleep(ROUND_S)
    wait_until("the learning traffic screened", lambda: set().union(*learned) <= envelope_trace_ids(clean(deployment)))
    wait_until("a snapshot saved after learning", lambda: _saves(worker) >= 3, timeout_s=20)
    worker.kill()   # no clean shutdown: what survives is what the periodic snapshots saved

    restarted = deployment.start_worker(STAGES, **FORGERY)
    known = spans("cart", 10, 20, rng, "legit")
    new = spans("search", 10, 20, rng, "legit")   # a service this key never reported
    send(gateway, token, known)
    send(gateway, token, new)
    wait_until("both screened by the restarted worker", lambda: trace_ids(known) <= envelope_trace_ids(
        clean(deployment)) and trace_ids(new) <= envelope_trace_ids(quarantined(deployment)), timeout_s=90)
    events = [e for e in audit_events(deployment) if e["event"] == "quarantined"]
    assert [e["reasons"] for e in events] == ["new_service"] and events[0]["principal"] == key_id
    assert 'rampart_forgery_snapshots_total{operation="load",outcome="ok"}' in restarted.metrics()


def _saves(worker: WorkerProcess) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith('rampart_forgery_snapshots_total{operation="save",outcome="ok"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_clean_stop_saves_what_changed_since_the_last_snapshot(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    # Snapshots every 10 minutes: the service's is due only at the next one, or at a clean stop.
    worker = deployment.start_worker(STAGES, **{**FORGERY, "RAMPART__FORGERY__STATE__SNAPSHOT_INTERVAL_S": "600"})
    _, token = deployment.api_key()
    request = spans("cart", 5, 20, random.Random(3), "legit")
    send(gateway, token, request)
    wait_until("the batch screened", lambda: trace_ids(request) <= envelope_trace_ids(clean(deployment)))
    store = redis.Redis.from_url(deployment.redis_url)
    pattern = f"{deployment.prefix}:forgery:v1:*"
    assert [k.decode().rsplit(":", 1)[1] for k in store.keys(pattern)] == ["acme"]   # the tenant, saved at once
    worker.stop()   # SIGTERM
    assert sorted(k.decode().rsplit(":v1:", 1)[1] for k in store.keys(pattern)) == ["s:acme/cart", "t:acme"]
