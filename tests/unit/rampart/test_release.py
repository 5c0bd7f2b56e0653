"""Operator release keys: a release verifies only for the batch and the words it was signed for, and
only with an operator key the pipeline lists."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from rampart.release import (
    RELEASE_REASON,
    RELEASE_SIGNATURE,
    RELEASED_BY,
    ReleaseError,
    ReleaseKeys,
    generate_operator_key,
    load_operator_key,
    sign_release,
)
from schemas.envelope import Envelope, PayloadFormat, Signal


def batch(**changes: object) -> Envelope:
    fields: dict[str, object] = dict(batch_id="b-1", tenant="acme", principal="k1", signal=Signal.TRACES,
                                     payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=1, gateway_id="gw",
                                     payload=b"spans", stages=("gateway", "validate", "scrub", "dedup"),
                                     attributes={"rampart.request_id": "r-1"})
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def released(key_path: Path, envelope: Envelope, reason: str = "load test CHG-1") -> Envelope:
    key = load_operator_key(str(key_path))
    attributes = sign_release(key, envelope, reason=reason, released_at="1764300000.000", record_id="traces/0/12")
    return replace(envelope, attributes={**envelope.attributes, **attributes})


@pytest.fixture
def alice(tmp_path: Path) -> tuple[Path, ReleaseKeys]:
    path = tmp_path / "ops" / "alice.key"
    key = generate_operator_key(str(path), "alice")
    return path, ReleaseKeys({"alice": key.public_text()})


def test_the_key_file_is_private_and_never_overwritten(alice: tuple[Path, ReleaseKeys]) -> None:
    path, _ = alice
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ReleaseError, match="never overwritten"):
        generate_operator_key(str(path), "alice")
    assert load_operator_key(str(path)).key_id == "alice"


def test_a_signed_release_names_its_operator(alice: tuple[Path, ReleaseKeys]) -> None:
    path, keys = alice
    assert keys.check(released(path, batch())) == "alice"
    assert keys.check(batch()) is None  # no release claimed: nothing to check


@pytest.mark.parametrize("change", [
    {"payload": b"other spans"}, {"batch_id": "b-2"}, {"tenant": "globex"}, {"principal": "k2"},
    {"signal": Signal.LOGS}, {"reason": "changed wording"}, {"by": "bob"}, {"drop_signature": True},
])
def test_a_release_moved_to_other_data_or_reworded_does_not_verify(alice: tuple[Path, ReleaseKeys],
                                                                   change: dict[str, object]) -> None:
    path, keys = alice
    good = released(path, batch())
    attributes = dict(good.attributes)
    if "reason" in change:
        attributes[RELEASE_REASON] = str(change["reason"])
    if "by" in change:
        attributes[RELEASED_BY] = str(change["by"])
    if "drop_signature" in change:
        del attributes[RELEASE_SIGNATURE]
    envelope_changes = {k: v for k, v in change.items() if k in Envelope.__dataclass_fields__}
    with pytest.raises(ReleaseError) as caught:
        keys.check(replace(good, attributes=attributes, **envelope_changes))  # type: ignore[arg-type]
    assert caught.value.reason == "bad_release"


def test_a_release_by_a_key_the_pipeline_does_not_list_is_refused(alice: tuple[Path, ReleaseKeys],
                                                                  tmp_path: Path) -> None:
    _, keys = alice
    mallory = tmp_path / "mallory.key"
    generate_operator_key(str(mallory), "alice")  # same id, another key: whoever holds a service key could
    with pytest.raises(ReleaseError, match="does not match"):
        keys.check(released(mallory, batch()))
    with pytest.raises(ReleaseError, match="no operator release key is configured"):
        ReleaseKeys({}).check(released(mallory, batch()))


def test_a_bad_public_key_in_the_config_is_named() -> None:
    with pytest.raises(ReleaseError, match=r"keyring\.release_keys\.alice is not valid base64"):
        ReleaseKeys({"alice": "not base64!"})
    with pytest.raises(ReleaseError, match=r"keyring\.release_keys\.bob must be 32 bytes"):
        ReleaseKeys({"bob": "AAAA"})


def test_an_unreadable_key_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("hello: world\n")
    with pytest.raises(ReleaseError, match="rampart keys operator"):
        load_operator_key(str(path))
    with pytest.raises(ReleaseError, match="cannot read"):
        load_operator_key(str(tmp_path / "missing"))
