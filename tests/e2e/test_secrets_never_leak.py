"""Secrets never appear in logs, metrics, audit events or error bodies.

One run of the whole pipeline (gateway, worker, sink) with known secret values — the client's API key,
someone else's guessed key, the HMAC and payload-encryption keys, the Kafka SASL password, a Redis
password and sensitive values inside the telemetry — then every output operators can see is scanned
for each secret in every form it could leak in (as is, base64, hex, URL-quoted).
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from rampart.keyring import write_key
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, post

pytestmark = pytest.mark.e2e

PLANTED = {"enduser.email": "jane.leak@example.com", "http.request.header.authorization": "Bearer sk_live_LEAKME42",
           "db.statement": "SELECT * FROM users WHERE password = 'hunter2-leak'"}


def forms(secret: str | bytes) -> set[bytes]:
    raw = secret.encode() if isinstance(secret, str) else secret
    found = {raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="), raw.hex().encode(),
             urllib.parse.quote(raw).encode()}
    return {f for f in found if len(f) >= 8}


def test_no_secret_reaches_any_output_operators_see(deployment: Deployment, backend: CapturingBackend,
                                                    tmp_path: Path) -> None:
    write_key(deployment.keyring_file, "enc-1", make_signing=False, encryption=True)
    key_file = yaml.safe_load(Path(deployment.keyring_file).read_text())
    kafka_password = secrets.token_urlsafe(16)
    password_file = tmp_path / "kafka-password"
    password_file.write_text(kafka_password)
    # Configured but unused on this plain-text listener: must still never be printed.
    env = {"RAMPART__KEYRING__ENCRYPT_UNSCRUBBED": "true", "RAMPART__KAFKA__SASL_PASSWORD_FILE": str(password_file)}
    gateway = deployment.start_gateway(**env)
    worker = deployment.start_worker("validate,scrub,dedup", **env)
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint, **env)
    _, token = deployment.api_key()
    guessed = f"rpk_{secrets.token_hex(8)}_{secrets.token_urlsafe(24)}"

    request = encode_spans(otlp_data.spans(5))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    for key, value in PLANTED.items():
        span.attributes.add(key=key).value.string_value = value
    body = request.SerializeToString()
    answers = []
    for headers in ({"x-api-key": token}, {"x-api-key": guessed}, {"Authorization": f"Bearer {guessed}"},
                    {"Authorization": f"Bearer {token}x"}, {"x-api-key": token, "Content-Type": "text/plain"}):
        status, response_headers, answer = post(f"{gateway.http_url}/v1/traces", body,
                                                {"Content-Type": "application/x-protobuf", **headers})
        answers.append(f"{status} {response_headers} ".encode() + answer)
    assert answers[0].startswith(b"200") and answers[1].startswith(b"401")

    deadline = time.monotonic() + 60
    while len(backend.arrivals) < 5:
        assert time.monotonic() < deadline, "the valid batch did not reach the backend"
        time.sleep(0.2)

    outputs: dict[str, bytes] = {"error bodies": b"\n".join(answers)}
    for process in (gateway, worker, sink):
        outputs[f"{process.args[0]} log"] = process.log().encode()
        outputs[f"{process.args[0]} metrics"] = process.metrics().encode()
    outputs["audit topic"] = b"\n".join(deployment.read_audit())

    secret_values: dict[str, set[bytes]] = {"client API key": forms(token), "guessed API key": forms(guessed),
                                            "Kafka password": forms(kafka_password)}
    # rpk_<hex id>_<secret>: the secret is what follows the second "_" (it may hold "_" itself).
    secret_values["guessed key's secret part"] = forms(guessed.split("_", 2)[2])
    secret_values["client key's secret part"] = forms(token.split("_", 2)[2])
    for key_id, encoded in {**key_file["keys"], **key_file["encryption_keys"]}.items():
        secret_values[f"key {key_id}"] = forms(base64.b64decode(encoded)) | {encoded.encode()}
    for name, value in PLANTED.items():
        secret_values[f"planted {name}"] = forms(value)
    # The scan proves something only if these outputs do talk about the requests: the refused keys are
    # audited by their (public) key id, and the sink counted the batch.
    guessed_id = guessed.split("_")[1]
    assert guessed_id.encode() in outputs["audit topic"], "the refused key's id is not in the audit events"
    assert b"rampart_sink_batches_total" in outputs["sink metrics"]
    assert all(outputs[f"{p} log"] for p in ("gateway", "worker", "sink"))

    leaks = [f"{secret} in {where}" for where, text in outputs.items()
             for secret, variants in secret_values.items() if any(v in text for v in variants)]
    assert not leaks, leaks
