"""`scrub`: find secrets and personal data in telemetry and remove, mask, hash or truncate them.

Where it looks: resource, span, event, link, log-record and metric-point attributes (nested maps and
arrays included), span and event names, and log bodies. What it looks for: the built-in detectors
below, custom regular expressions, and attributes whose key names a credential. Output is
idempotent: redaction markers are never matched again, so scrubbing scrubbed data changes nothing.

The common case is clean data, and it costs close to nothing: before decoding anything the raw
protobuf payload is screened with cheap substring tests, and a batch in which no rule could match
is passed through untouched. (JSON payloads are always scanned fully: JSON escapes could hide a
trigger from a byte screen.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rampart_native import Needles as NativeNeedles
from rampart_native import card_screen

from processors.base import Batch, Processor, RawBatch, Result
from processors.otlp import resources, walk
from rampart.config import DetectorConfig, ScrubAction, ScrubConfig, default_detectors
from rampart.settings import ConfigError, env_secret
from schemas.envelope import PayloadFormat, Signal

__all__ = ["DETECTORS", "ScrubProcessor", "ScrubSetupError", "luhn_valid"]

REDACTED_COUNT_KEY = "rampart.redacted.count"
MASK = "[REDACTED]"
_MARKER = r"\[(?:REDACTED|TRUNCATED|HMAC:[0-9a-f]{16})\]"


@dataclass(frozen=True)
class Needles:
    """A screen that is a plain substring test: does any of these occur in the payload (ignoring ASCII
    case if ``fold``, as ``bytes.lower()`` does)? A processor runs all of its in one native call."""

    needles: tuple[bytes, ...]
    fold: bool = False


@dataclass(frozen=True)
class Detector:
    pattern: str                       # regular expression over one string value
    # Cheap test of the raw payload: could this detector match at all?
    # It must never say no where the full scan would find something.
    screen: Needles | Callable[[bytes], bool]
    check: Callable[[str], bool] | None = None   # further test of a match (e.g. Luhn)
    keys: tuple[str, ...] = ()         # only in attributes with these keys (empty: everywhere)


def luhn_valid(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


def _contains(*needles: bytes) -> Needles:
    return Needles(needles)


def _contains_ci(*needles: bytes) -> Needles:
    return Needles(tuple(n.lower() for n in needles), fold=True)


# A card number shows as eight digits in a row or 4+4 around a space or dash: card_screen looks for
# exactly that, natively (no regex scan).
_EMAIL_SCREEN = re.compile(rb"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2}")
_IP_SCREEN = re.compile(rb"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_SECRET_PARAMS = ("access_token", "api_key", "apikey", "auth", "client_secret", "key", "passwd", "password",
                  "pwd", "secret", "sig", "signature", "token")

# Both the e-mail and the JWT expressions used to take quadratic time on long runs of the
# characters they start with: the search restarts at every character of the run and rescans it to
# its end. A 32 KiB value of "1." repeated took 1.7 s (a span may carry 128 such values), "eyJ"
# repeated 0.5 s. The e-mail local part is now at most 64 characters (RFC 5321's limit; the
# matches are otherwise the same) and scanned possessively, as is each domain label; a JWT must
# begin at a token boundary (the look-behind), as real ones do (after a space, "=", a quote, "/").
DETECTORS: dict[str, Detector] = {
    # A bare "@" is common in binary ids, so the screen looks for "@domain.tld" instead.
    "email": Detector(r"[A-Za-z0-9._%+-]{1,64}+@(?:[A-Za-z0-9-]++\.)+[A-Za-z]{2,}",
                      lambda p: _EMAIL_SCREEN.search(p) is not None),
    "payment_card": Detector(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])",
                             card_screen, check=luhn_valid),
    "jwt": Detector(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
                    _contains(b"eyJ")),
    "credentials": Detector(r"\b(?i:bearer|basic|digest|negotiate)\s+[A-Za-z0-9._~+/=-]{8,}",
                            _contains_ci(b"bearer", b"basic", b"digest", b"negotiate")),
    "aws_access_key": Detector(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}\b",
                               _contains(b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA", b"ANPA", b"ANVA")),
    "private_key": Detector(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
                            _contains(b"PRIVATE KEY")),
    "url_password": Detector(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)", _contains(b"://")),
    "secret_param": Detector(
        r"(?<=[?&;])(?i:" + "|".join(_SECRET_PARAMS) + r")=[^&#\s;]+",
        _contains_ci(*(p.encode() + b"=" for p in _SECRET_PARAMS))),
    "sql_literal": Detector(r"'(?:[^']|'')*'|(?<![\w$.])\d+(?:\.\d+)?(?![\w.])",
                            _contains(b"db.statement", b"db.query.text"),
                            keys=("db.statement", "db.query.text")),
    "ip_address": Detector(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])",
                           lambda p: _IP_SCREEN.search(p) is not None),
}


class ScrubSetupError(ValueError):
    """The scrub configuration cannot be used (unknown detector, bad pattern, missing hash key)."""


@dataclass(frozen=True)
class _Rule:
    name: str
    action: ScrubAction
    detector: Detector


class ScrubProcessor(Processor):
    name = "scrub"

    def __init__(self, config: ScrubConfig, env: Mapping[str, str]) -> None:
        self._config = config
        self._rules = _rules(config)
        self._hash_key = _hash_key(config, env) if self._uses_hash() else b""
        self._sensitive = tuple(k.lower() for k in config.sensitive_keys)
        self._sensitive_bytes = tuple(k.encode() for k in self._sensitive)
        self._allow = frozenset(config.allow_keys)
        # Every substring screen, the sensitive keys' first: one native call over a payload answers all.
        needles: list[tuple[bytes, bool]] = [(key, True) for key in self._sensitive_bytes]
        self._needle_slots: dict[int, range] = {}
        for i, rule in enumerate(self._rules):
            if isinstance(rule.detector.screen, Needles):
                self._needle_slots[i] = range(len(needles), len(needles) + len(rule.detector.screen.needles))
                needles += [(needle, rule.detector.screen.fold) for needle in rule.detector.screen.needles]
        self._needles = NativeNeedles(needles)
        # Per set of rules the screens let through: one combined expression, compiled once.
        self._plans: dict[tuple[frozenset[int], bool], _Plan] = {}
        # Per set of rules allowed for some strings: an expression of just those rules (clears()).
        self._finders: dict[frozenset[int], tuple[re.Pattern[str] | None, bool]] = {}

    def _uses_hash(self) -> bool:
        return any(r.action == "hash" for r in self._rules) or self._config.sensitive_key_action == "hash"

    # ------------------------------------------------------------ the screen

    def might_match(self, payload: bytes, payload_format: PayloadFormat) -> bool:
        """False only if no rule can match anything in this payload (then the batch is left alone)."""
        plan = self._plan(payload, payload_format)
        return plan.keys_checked or bool(plan.rules)

    def _plan(self, payload: bytes | None, payload_format: PayloadFormat) -> _Plan:
        """The rules that could match in this payload, by the cheap screens; all of them if unknown."""
        everything = frozenset(range(len(self._rules)))
        if payload is None or payload_format is not PayloadFormat.OTLP_PROTO or self._allow:
            return self._plan_for(everything, keys_checked=True)
        found = self._needles.found(payload)
        keys_checked = any(found[: len(self._sensitive_bytes)])
        active = frozenset(i for i in range(len(self._rules)) if self._screen(i, payload, found))
        return self._plan_for(active, keys_checked)

    def _screen(self, i: int, payload: bytes, found: list[bool]) -> bool:
        screen = self._rules[i].detector.screen
        if isinstance(screen, Needles):
            return any(found[j] for j in self._needle_slots[i])
        return screen(payload)

    def _plan_for(self, active: frozenset[int], keys_checked: bool) -> _Plan:
        cached = self._plans.get((active, keys_checked))
        if cached is None:
            general = frozenset(i for i in active if not self._rules[i].detector.keys)
            keyed: dict[str, frozenset[int]] = {}
            for i in sorted(active - general):
                for key in self._rules[i].detector.keys:
                    keyed[key] = keyed.get(key, general) | {i}
            alternatives = [f"(?P<_marker>{_MARKER})"] + [f"(?P<r{i}>{self._rules[i].detector.pattern})"
                                                          for i in sorted(active)]
            cached = _Plan(active, general, keyed, re.compile("|".join(alternatives)), keys_checked)
            self._plans[(active, keys_checked)] = cached
        return cached

    # ------------------------------------------------------------ the fast path

    def clears(self, raw: RawBatch) -> Result | None:
        """None if scrub might change anything in this batch: a rule the screens let through matches
        (even where a check such as Luhn's would then reject the match), or a key may be sensitive.

        It looks at a superset of what :meth:`process` scans (every string it would scan, each with
        at least the rules process would allow for it), so "no match at all" here means no hit there.
        """
        if self._allow or raw.signal is not Signal.TRACES:
            return None
        result = Result()
        plan = self._plan(raw.payload, PayloadFormat.OTLP_PROTO)
        if not plan.rules and not plan.keys_checked:
            result.count("screened_clean_batches")
            return result
        keyed = sorted(plan.keyed)
        groups = raw.scan.texts(keyed)
        for allowed, texts in zip([plan.general, *(plan.keyed[key] for key in keyed)], groups, strict=True):
            if allowed and texts and self._finds(allowed, texts):
                return None
        if plan.keys_checked and any(key.lower().endswith(self._sensitive) for key in raw.scan.attribute_keys()):
            return None
        return result

    def _finds(self, allowed: frozenset[int], texts: list[str]) -> bool:
        """Whether any of the ``allowed`` rules matches anywhere in ``texts``.

        Only the allowed rules are in the expression: another rule's match is no hit there (numbers
        outside SQL attributes) and would only send clean batches to the full scan. The built-in
        rules search the texts joined by newlines, in one call. That is safe: a built-in match
        inside one string is still a match at the same place in the joined text, because no
        built-in expression anchors on a string's start or end and every look-around or boundary at
        a string's edge (\\b, (?<![\\d.]), (?![\\w.]), (?<=://), (?=@)) treats the newline like
        the edge; private_key's "$" finds the joined text's end instead. Joining can only add
        matches (a quoted run across two strings), which sends the batch to the full scan, never
        misses one. Custom rules may anchor (^, $, \\A), so they search each string on its own.
        """
        finder = self._finders.get(allowed)
        if finder is None:
            builtin = all(self._rules[i].detector is DETECTORS.get(self._rules[i].name) for i in allowed)
            try:
                pattern: re.Pattern[str] | None = re.compile(
                    "|".join(f"(?:{self._rules[i].detector.pattern})" for i in sorted(allowed)))
            except re.error:  # (custom rules reusing a group name): never cleared, as process() cannot run either
                pattern = None
            finder = self._finders[allowed] = (pattern, builtin)
        pattern, builtin = finder
        if pattern is None:
            return True
        if builtin:
            return pattern.search("\n".join(texts)) is not None
        return any(pattern.search(text) is not None for text in texts)

    # ------------------------------------------------------------ the scan

    def process(self, batch: Batch) -> Result:
        result = Result()
        plan = self._plan(batch.raw_payload, batch.payload_format)
        if not plan.rules and not plan.keys_checked:
            result.count("screened_clean_batches")
            return result
        if not plan.general and not plan.keys_checked:
            # Only rules bound to particular keys (e.g. SQL literals in db.query.text) could match:
            # look at those attributes alone, and only in items whose bytes name such a key
            # (serialising an item in C is cheaper than touching each attribute from Python).
            keys = [key.encode() for key in plan.keyed]
            for ref in walk(batch.request, batch.signal):
                serialized = ref.item.SerializeToString()
                if any(key in serialized for key in keys):
                    tally = _Tally(result, plan)
                    self._attributes(ref.item.attributes, tally)
                    tally.mark(ref.item.attributes)
            return result
        # Fields this build of the OTLP schema does not know (a newer SDK's, or a client's own) are
        # kept by the decoder as raw bytes that no rule looks into: they used to pass through
        # unscrubbed. Whatever may hold a match is dropped unless scrub can inspect it.
        batch.request.DiscardUnknownFields()
        for resource in resources(batch.request, batch.signal):
            tally = _Tally(result, self._item_plan(resource.resource, plan))
            if tally.plan.rules or tally.plan.keys_checked:
                self._attributes(resource.resource.attributes, tally)
                tally.mark(resource.resource.attributes)
        for ref in walk(batch.request, batch.signal):
            item = ref.item
            # A few dirty items fire the batch's screen; the screens again on each item's own bytes
            # (serialised in C) spare the Python scan of every item they clear.
            tally = _Tally(result, self._item_plan(item, plan))
            if not tally.plan.rules and not tally.plan.keys_checked:
                continue
            self._attributes(item.attributes, tally)
            if batch.signal is Signal.TRACES:
                item.name = self._text(item.name, tally)
                for event in item.events:
                    event.name = self._text(event.name, tally)
                    self._attributes(event.attributes, tally)
                for link in item.links:
                    self._attributes(link.attributes, tally)
            elif batch.signal is Signal.LOGS:
                self._value(item.body, tally, key="")
            for exemplar in getattr(item, "exemplars", ()):
                self._attributes(exemplar.filtered_attributes, tally)
            tally.mark(item.attributes)
        return result

    def _item_plan(self, message: Any, batch_plan: _Plan) -> _Plan:
        """The rules that could match in one item or resource: the screens run on its own bytes.
        In allow-list mode every attribute must be looked at, so the batch's plan stands."""
        if self._allow:
            return batch_plan
        return self._plan(message.SerializeToString(), PayloadFormat.OTLP_PROTO)

    def _attributes(self, attributes: Any, tally: _Tally) -> None:
        for i in range(len(attributes) - 1, -1, -1):
            kv = attributes[i]
            key = kv.key
            if key == REDACTED_COUNT_KEY:
                continue
            if self._allow and key not in self._allow:
                tally.hit("not_allowed_key")
                del attributes[i]
                continue
            if tally.plan.keys_checked and key.lower().endswith(self._sensitive):
                if not _is_redacted(kv.value):
                    tally.hit("sensitive_key")
                    if self._config.sensitive_key_action == "drop":
                        del attributes[i]
                    else:
                        self._replace_whole(kv.value, self._config.sensitive_key_action)
                continue
            if self._value(kv.value, tally, key):
                del attributes[i]

    def _value(self, value: Any, tally: _Tally, key: str) -> bool:
        """Scrub an AnyValue in place, without recursion. True if the whole attribute must be dropped."""
        stack = [value]
        while stack:
            current = stack.pop()
            kind = current.WhichOneof("value")
            if kind == "string_value":
                text, drop = self._scan(current.string_value, tally, key)
                if drop:
                    if current is value:
                        return True
                    text = MASK
                if text is not None:
                    current.string_value = text
            elif kind == "array_value":
                stack.extend(current.array_value.values)
            elif kind == "kvlist_value":
                self._attributes(current.kvlist_value.values, tally)
        return False

    def _text(self, text: str, tally: _Tally) -> str:
        """A name (span, event) cannot be removed, so a "drop" there masks the whole name."""
        new, drop = self._scan(text, tally, "")
        return MASK if drop else (new if new is not None else text)

    def _scan(self, text: str, tally: _Tally, key: str) -> tuple[str | None, bool]:
        """(new text or None if unchanged, whether a drop rule matched)."""
        plan = tally.plan
        allowed = plan.keyed.get(key, plan.general)
        if not text or not allowed:
            return None, False
        pieces: list[str] = []
        last, changed, drop = 0, False, False
        for match in plan.pattern.finditer(text):
            group = match.lastgroup
            if group is None or group == "_marker":
                continue
            index = int(group[1:])
            if index not in allowed:
                continue
            rule = self._rules[index]
            found = match.group()
            if rule.detector.check is not None and not rule.detector.check(found):
                continue
            tally.hit(rule.name)
            if rule.action == "drop":
                drop = True
                continue
            pieces.append(text[last:match.start()])
            pieces.append(self._redact(found, rule.action))
            last, changed = match.end(), True
        if not changed:
            return None, drop
        pieces.append(text[last:])
        return "".join(pieces), drop

    def _redact(self, found: str, action: ScrubAction) -> str:
        if action == "hash":
            digest = hmac.new(self._hash_key, found.encode(), hashlib.sha256).hexdigest()[:16]
            return f"[HMAC:{digest}]"
        if action == "truncate":
            return found[: self._config.truncate_keep_chars] + "[TRUNCATED]"
        return MASK

    def _replace_whole(self, value: Any, action: ScrubAction) -> None:
        is_text = value.WhichOneof("value") == "string_value"
        original = value.string_value if is_text else value.SerializeToString().hex()
        value.Clear()
        value.string_value = self._redact(original, action)


@dataclass(frozen=True)
class _Plan:
    """What one batch is scanned for: the rules its screens let through."""

    rules: frozenset[int]
    general: frozenset[int]                 # rules that apply to every string
    keyed: dict[str, frozenset[int]]        # attribute key -> rules that apply to it (general included)
    pattern: re.Pattern[str]
    keys_checked: bool                      # whether a sensitive key name could be present


class _Tally:
    """Matches within one item: feeds the per-rule counters and marks the item as changed."""

    __slots__ = ("matches", "plan", "result")

    def __init__(self, result: Result, plan: _Plan) -> None:
        self.result = result
        self.plan = plan
        self.matches = 0

    def hit(self, rule: str) -> None:
        self.matches += 1
        self.result.count(rule)

    def mark(self, attributes: Any) -> None:
        if self.matches:
            self.result.changed += 1
            _add_count(attributes, self.matches)


_REDACTED_VALUE = re.compile(rf"(?s).{{0,64}}{_MARKER}")


def _is_redacted(value: Any) -> bool:
    return value.WhichOneof("value") == "string_value" and _REDACTED_VALUE.fullmatch(value.string_value) is not None


def _add_count(attributes: Any, matches: int) -> None:
    for kv in attributes:
        if kv.key == REDACTED_COUNT_KEY:
            kv.value.int_value += matches
            return
    attributes.add(key=REDACTED_COUNT_KEY).value.int_value = matches


def _rules(config: ScrubConfig) -> list[_Rule]:
    defaults = default_detectors()
    unknown = sorted(set(config.detectors) - set(DETECTORS))
    if unknown:
        raise ScrubSetupError(f"scrub.detectors.{unknown[0]}: unknown detector (known: {', '.join(sorted(DETECTORS))})")
    chosen: dict[str, DetectorConfig] = {**defaults, **config.detectors}
    rules = [_Rule(name, c.action, DETECTORS[name]) for name, c in chosen.items() if c.enabled]
    for name, custom in config.rules.items():
        pattern = custom.pattern
        flags = re.match(r"^\(\?([aiLmsux]+)\)", pattern)
        if flags:  # a leading global flag group becomes a scoped one, so rules can share one expression
            pattern = f"(?{flags.group(1)}:{pattern[flags.end():]})"
        try:
            re.compile(f"(?P<probe>{pattern})")
        except re.error as exc:
            raise ScrubSetupError(f"scrub.rules.{name}.pattern: not a valid regular expression ({exc})") from None
        rules.append(_Rule(name, custom.action, Detector(pattern, screen=lambda _p: True)))
    return rules


def _hash_key(config: ScrubConfig, env: Mapping[str, str]) -> bytes:
    try:
        raw = env_secret(env, config.hash_key_env) or ""
    except ConfigError as exc:
        raise ScrubSetupError(str(exc)) from None
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 32:
        raise ScrubSetupError(f"a scrub rule uses the hash action: set {config.hash_key_env} to a base64 key of at "
                              "least 32 bytes (e.g. `openssl rand -base64 32`)")
    return key

