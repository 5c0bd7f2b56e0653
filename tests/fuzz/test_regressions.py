"""Every input kept in tests/data/hostile/ (see its README.md) replayed against the code it once broke.

The file name says the target: ``split-<format>-*`` through split_payload with a 1000-byte record
limit, ``gzip-*`` through GzipInflater, ``stage-<format>-<signal>-*`` through the fused stage chain.
A file without an expectation below fails the test, so nothing is kept without saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.body import GzipInflater
from ingest.errors import IngestError, InvalidArgument
from ingest.splitting import split_payload
from processors.chain import ChainOutcome
from schemas.envelope import PayloadFormat, Signal, decode
from tests.fuzz.support import TOPICS, chain, check_outcome, envelope, hang_guard

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
FILES = sorted(p.name for p in HOSTILE.iterdir() if p.suffix in (".json", ".pb", ".gz"))


def split(name: str) -> IngestError | list[bytes]:
    fmt = PayloadFormat.OTLP_JSON if name.startswith("split-json-") else PayloadFormat.OTLP_PROTO
    try:
        return split_payload(Signal.TRACES, fmt, (HOSTILE / name).read_bytes(), 1000)
    except IngestError as exc:
        return exc


def inflate(name: str) -> IngestError | bytes:
    inflater = GzipInflater(10_000)
    try:
        inflater.feed((HOSTILE / name).read_bytes())
        return inflater.finish()
    except IngestError as exc:
        return exc


def stage(name: str) -> ChainOutcome:
    _, fmt, signal = name.split("-")[:3]
    payload_format = PayloadFormat.OTLP_JSON if fmt == "json" else PayloadFormat.OTLP_PROTO
    outcome = chain(["validate", "scrub", "dedup"]).handle(
        Signal(signal), envelope((HOSTILE / name).read_bytes(), Signal(signal), payload_format), None, "fz.raw/0/0")
    check_outcome(outcome, Signal(signal))
    return outcome


def reasons(outcome: ChainOutcome) -> set[str]:
    return {decode(r.value).attributes["rampart.reject.reason"] for r in outcome.records
            if r.topic.startswith(f"{TOPICS.prefix}.rejected.")}


def invalid_argument(result: object) -> bool:
    return isinstance(result, InvalidArgument) and result.http_status == 400


EXPECTED: dict[str, Callable[[str], bool]] = {
    # RecursionError escaped the JSON splitter: HTTP 500.
    "split-json-nested-5000.json": lambda n: invalid_argument(split(n)),
    # An oversized resource that is not an object: AttributeError, HTTP 500.
    "split-json-resource-not-an-object.json": lambda n: invalid_argument(split(n)),
    # The second "resourceSpans" silently replaced the first.
    "split-json-duplicate-keys.json": lambda n: invalid_argument(split(n)),
    # The framing check (now the C decoder) accepts groups; the wire-level splitter must refuse them.
    "split-proto-group-at-top-level.pb": lambda n: invalid_argument(split(n)),
    # Everything after the first gzip member was dropped, and the request answered 200.
    "gzip-two-members.gz": lambda n: inflate(n) == b"first member|second member",
    # Trailing bytes after the gzip member were ignored.
    "gzip-trailing-garbage.gz": lambda n: invalid_argument(inflate(n)),
    # json.loads kept the last traceId: an all-zero one here, a valid one in the other order.
    "stage-json-traces-duplicate-trace-id.json": lambda n: stage(n).quarantine_reason == "undecodable_payload",
    # json.loads kept the second resource list; the first one's spans vanished without a reject.
    "stage-json-traces-duplicate-resource-lists.json": lambda n: stage(n).quarantine_reason == "undecodable_payload",
    # The e-mail address in field 999 reached the clean topic: scrub never looked at unknown fields.
    "stage-proto-traces-unknown-field-email.pb": lambda n: not any(
        b"jane.doe" in r.value for r in stage(n).records if r.topic == TOPICS.clean(Signal.TRACES)),
    # NaN compares false both ways, so NaN bounds passed as sorted.
    "stage-json-metrics-nan-histogram-bounds.json": lambda n: reasons(stage(n)) == {"histogram_bounds_unsorted"},
    # Event names had no length limit (scrub scans them).
    "stage-proto-traces-event-name-2kib.pb": lambda n: reasons(stage(n)) == {"name_too_long"},
}


@pytest.mark.parametrize("name", FILES)
def test_kept_input_is_handled(name: str) -> None:
    assert name in EXPECTED, f"{name}: add what it once broke and what must happen now to EXPECTED"
    with hang_guard(30, name):
        assert EXPECTED[name](name)
