"""Every detector finds what it should and leaves near-misses alone; actions, allow-list and idempotence."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.scrub import MASK, REDACTED_COUNT_KEY, ScrubProcessor, ScrubSetupError, luhn_valid
from rampart.config import CustomRuleConfig, DetectorConfig, ScrubConfig
from schemas.envelope import PayloadFormat, Signal
from tests.unit.processors.helpers import batch, logs, traces

HASH_KEY = {"RAMPART_SCRUB_HASH_KEY": base64.b64encode(b"k" * 32).decode()}
SCRUB = ScrubProcessor(ScrubConfig(), HASH_KEY)


def scrub_value(value: str, key: str = "note", processor: ScrubProcessor = SCRUB) -> str | None:
    """The attribute's value after scrubbing, or None if the attribute was dropped."""
    request = traces(1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key=key).value.string_value = value
    processor.process(batch(Signal.TRACES, request))
    found = {kv.key: kv.value.string_value for kv in span.attributes}
    return found.get(key)


@pytest.mark.parametrize(("text", "expected"), [
    ("mail jane.doe+x@example.co.uk now", f"mail {MASK} now"),
    ("card 4111 1111 1111 1111 ok", f"card {MASK} ok"),
    ("card 4111-1111-1111-1111", f"card {MASK}"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     f"token {MASK}"),
    ("Authorization: Bearer abcdefghijklmnop", f"Authorization: {MASK}"),
    ("basic dXNlcjpwYXNzd29yZA==", MASK),
    ("key AKIAIOSFODNN7EXAMPLE used", f"key {MASK} used"),
    ("https://user:hunter2@db.example.com/x", f"https://{MASK}@db.example.com/x"),
    ("/login?user=bob&password=hunter2&next=/", f"/login?user=bob&{MASK}&next=/"),
    ("GET /cb?code=1&access_token=abc.def", f"GET /cb?code=1&{MASK}"),
])
def test_detectors_find_and_mask(text: str, expected: str) -> None:
    assert scrub_value(text) == expected


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112",            # 16 digits that fail Luhn: not a card
    "ts 1764000000123456789",               # 19-digit timestamp, fails Luhn
    "version 1.2.3.4",                      # not an IP while ip_address is off, not a card
    "user@localhost",                       # no top-level domain: not an e-mail address
    "eyJ not a token",
    "basic auth is disabled",               # the word, not a credential
    "AKIA is a prefix",
    "https://db.example.com:5432/x",        # port, no password
    "/search?q=password",                   # the word as a value, not a password parameter
    "already [REDACTED] here",
])
def test_near_misses_are_left_alone(text: str) -> None:
    assert scrub_value(text) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234")


def test_private_key_blocks_drop_the_attribute() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    assert scrub_value(f"key: {pem}") is None


def test_sql_literals_only_in_database_statements() -> None:
    statement = "SELECT * FROM users WHERE email = 'jane@example.com' AND id = 42"
    assert scrub_value(statement, key="db.query.text") == f"SELECT * FROM users WHERE email = {MASK} AND id = {MASK}"
    assert scrub_value("retry 42 times", key="note") == "retry 42 times"


@pytest.mark.parametrize("key", ["http.request.header.authorization", "http.request.header.cookie",
                                 "HTTP.Request.Header.X-Api-Key", "db.password"])
def test_sensitive_keys_lose_their_value(key: str) -> None:
    assert scrub_value("anything at all", key=key) is None


def test_ip_addresses_when_enabled_are_hashed_and_joinable() -> None:
    processor = ScrubProcessor(ScrubConfig(detectors={"ip_address": DetectorConfig(action="hash")}), HASH_KEY)
    first = scrub_value("client 10.1.2.3", processor=processor)
    assert first is not None and first.startswith("client [HMAC:") and "10.1.2.3" not in first
    assert scrub_value("client 10.1.2.3", processor=processor) == first
    assert scrub_value("client 10.1.2.4", processor=processor) != first
    assert scrub_value("client 999.1.2.3", processor=processor) == "client 999.1.2.3"


def test_truncate_keeps_a_prefix() -> None:
    processor = ScrubProcessor(ScrubConfig(detectors={"email": DetectorConfig(action="truncate")}), HASH_KEY)
    assert scrub_value("jane.doe@example.com", processor=processor) == "jane[TRUNCATED]"


def test_custom_rules() -> None:
    config = ScrubConfig(rules={"employee_id": CustomRuleConfig(pattern=r"EMP-\d{6}", action="mask")})
    assert scrub_value("by EMP-123456", processor=ScrubProcessor(config, {})) == f"by {MASK}"


def test_allow_list_keeps_only_listed_keys() -> None:
    processor = ScrubProcessor(ScrubConfig(allow_keys=("service.name", "http.route")), {})
    request = traces(1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="http.route").value.string_value = "/cart"
    span.attributes.add(key="user.name").value.string_value = "jane"
    processor.process(batch(Signal.TRACES, request))
    assert sorted(kv.key for kv in span.attributes) == ["http.route", REDACTED_COUNT_KEY]


def test_changed_items_are_counted_and_marked() -> None:
    request = traces(2)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="a").value.string_value = "jane@example.com and joe@example.com"
    spans[0].events.add(name="login by bob@example.com")
    result = SCRUB.process(batch(Signal.TRACES, request))
    assert result.changed == 1 and result.counts == {"email": 3}
    assert {kv.key: kv.value.int_value for kv in spans[0].attributes}[REDACTED_COUNT_KEY] == 3
    assert spans[0].events[0].name == f"login by {MASK}"
    assert not any(kv.key == REDACTED_COUNT_KEY for kv in spans[1].attributes)


def test_span_names_and_nested_log_bodies() -> None:
    request = logs(1)
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    inner = record.body.kvlist_value.values.add(key="user").value.kvlist_value.values.add(key="contact").value
    inner.array_value.values.add().string_value = "mail jane@example.com"
    record.body.kvlist_value.values.add(key="cookie").value.string_value = "session=1"
    SCRUB.process(batch(Signal.LOGS, request))
    contact = record.body.kvlist_value.values[0].value.kvlist_value.values[0].value
    assert contact.array_value.values[0].string_value == f"mail {MASK}"
    assert [kv.key for kv in record.body.kvlist_value.values] == ["user"]


def test_clean_protobuf_batches_are_screened_out_cheaply() -> None:
    request = traces(50)
    payload = request.SerializeToString()
    b = batch(Signal.TRACES, request)
    b.raw_payload, b.payload_format = payload, PayloadFormat.OTLP_PROTO
    result = SCRUB.process(b)
    assert result.counts == {"screened_clean_batches": 1} and request.SerializeToString() == payload


def test_json_payloads_are_always_scanned() -> None:
    request = traces(1)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="a").value.string_value = "x@example.com"
    b = batch(Signal.TRACES, request)
    b.raw_payload, b.payload_format = b'{"hidden": "x\\u0040example.com"}', PayloadFormat.OTLP_JSON
    assert SCRUB.process(b).counts == {"email": 1}


def test_bad_configuration_is_explained() -> None:
    with pytest.raises(ScrubSetupError, match=r"scrub.detectors.emial: unknown detector \(known: .*email"):
        ScrubProcessor(ScrubConfig(detectors={"emial": DetectorConfig()}), {})
    with pytest.raises(ScrubSetupError, match=r"scrub\.rules\.bad\.pattern: not a valid regular expression"):
        ScrubProcessor(ScrubConfig(rules={"bad": CustomRuleConfig(pattern="(")}), {})
    with pytest.raises(ScrubSetupError, match="set RAMPART_SCRUB_HASH_KEY"):
        ScrubProcessor(ScrubConfig(detectors={"email": DetectorConfig(action="hash")}), {})


SECRETS = st.sampled_from(["jane@example.com", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE", "Bearer abcdefghijkl",
                           "https://u:p@h/x", "?token=abc", "10.0.0.1", "'literal'", "42"])


@settings(max_examples=200)
@given(st.lists(st.one_of(st.text(max_size=20), SECRETS), max_size=6), st.sampled_from(["note", "db.statement"]))
def test_scrubbing_is_idempotent(parts: list[str], key: str) -> None:
    processor = ScrubProcessor(ScrubConfig(detectors={"ip_address": DetectorConfig(action="hash"),
                                                      "email": DetectorConfig(action="truncate")}), HASH_KEY)
    once = scrub_value(" ".join(parts), key=key, processor=processor)
    if once is not None:
        assert scrub_value(once, key=key, processor=processor) == once


def _all_strings(request: Any) -> str:
    return str(request)


def test_secrets_never_survive_in_any_place() -> None:
    request = traces(1)
    rs = request.resource_spans[0]
    rs.resource.attributes.add(key="owner").value.string_value = "ops@example.com"
    span = rs.scope_spans[0].spans[0]
    span.name = "GET /users/jane@example.com"
    span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8).attributes.add(key="x").value.string_value = \
        "Bearer abcdefghijklmnop"
    SCRUB.process(batch(Signal.TRACES, request))
    text = _all_strings(request)
    assert "example.com" not in text and "abcdefghijklmnop" not in text


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(max_size=30), SECRETS,
                          st.sampled_from(["PassWord=x", "?PaSsWoRd=1", "BeArEr abcdefghij"])), max_size=5))
def test_the_screen_never_hides_what_the_scan_would_find(parts: list[str]) -> None:
    processor = ScrubProcessor(ScrubConfig(detectors={"ip_address": DetectorConfig(action="hash")}), HASH_KEY)
    request = traces(1)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="v").value.string_value = "?" + " ".join(parts)
    payload = request.SerializeToString()
    full = processor.process(batch(Signal.TRACES, traces_copy(request)))
    if any(k != "screened_clean_batches" for k in full.counts):
        assert processor.might_match(payload, PayloadFormat.OTLP_PROTO)


def traces_copy(request: Any) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    return copy
