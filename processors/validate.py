"""`validate`: structural and semantic checks per item, each failure a drop with a reason.

Invalid UTF-8 in a protobuf string and absurd nesting never reach here: the protobuf decoder refuses
them, and the runtime quarantines the whole batch with the decoder's reason.
"""

from __future__ import annotations

import math
import re
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from processors.base import Batch, Processor, RawBatch, Result
from processors.otlp import ItemRef, resources, walk
from rampart.config import ValidateConfig
from schemas.envelope import Signal

__all__ = ["ValidateProcessor", "valid_tracestate"]

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_MAX_FIXED64 = 2**64 - 1
# W3C Trace Context, tracestate: up to 32 list members "key=value", comma separated.
_TS_KEY = r"(?:[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}|[a-z][a-z0-9_\-*/]{0,255})"
_TS_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TS_MEMBER = re.compile(rf"^{_TS_KEY}={_TS_VALUE}$")


def valid_tracestate(value: str) -> bool:
    if not value:
        return True
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    return len(members) <= 32 and all(_TS_MEMBER.match(m) for m in members)


class ValidateProcessor(Processor):
    name = "validate"

    def __init__(self, config: ValidateConfig) -> None:
        self._c = config

    def process(self, batch: Batch) -> Result:
        result = Result()
        self._guard_tenant(batch, result)
        low = batch.received_at_ns - int(self._c.max_age_s * 1e9)
        high = batch.received_at_ns + int(self._c.max_future_s * 1e9)
        check = {Signal.TRACES: self._span, Signal.METRICS: self._point, Signal.LOGS: self._log}[batch.signal]
        # Resource and scope attributes get the limits of an item's, and a resource or scope that
        # breaks one takes its items with it. Unchecked, a resource of a million attributes (7 MB)
        # passed on to every later stage and sink, and dedup serialised it once per item.
        resource = scope = None
        resource_problem: tuple[str, str] | None = None
        holder_problem: tuple[str, str] | None = None
        for ref in walk(batch.request, batch.signal):
            if ref.resource is not resource or ref.scope is not scope:
                if ref.resource is not resource:
                    resource, scope = ref.resource, None
                    resource_problem = self._holder(ref.resource.resource, "resource")
                scope = ref.scope
                holder_problem = resource_problem or self._holder(ref.scope.scope, "scope")
            problem = holder_problem or check(ref, low, high)
            if problem is not None:
                result.drop(ref, *problem)
        return result

    def clears(self, raw: RawBatch) -> Result | None:
        """A clean batch (traces only) passes every check when the batch's extremes do: the native
        scan keeps, over every span, event, link, resource and scope, the worst of each quantity
        checked here; trace states and tenant claims are checked here on what it extracted."""
        low = raw.received_at_ns - int(self._c.max_age_s * 1e9)
        high = raw.received_at_ns + int(self._c.max_future_s * 1e9)
        if raw.signal is not Signal.TRACES or low > _MAX_FIXED64 or high < 0:
            return None
        c, scan = self._c, raw.scan
        if not scan.validate(c.max_attributes, c.max_events, c.max_links, c.max_name_bytes, c.max_string_bytes,
                             c.max_value_depth, max(low, 0), min(high, _MAX_FIXED64)):
            return None
        if not all(valid_tracestate(state) for state in scan.tracestates()):
            return None
        # A claim equal to the authenticated tenant is left alone; any other would be overwritten or dropped.
        if any(claim != raw.tenant for claim in scan.claims(list(c.tenant_keys))):
            return None
        return Result()

    def _holder(self, holder: Any, what: str) -> tuple[str, str] | None:
        problem = self._attributes(holder.attributes)
        return (problem[0], f"{what}: {problem[1]}") if problem else None

    def _guard_tenant(self, batch: Batch, result: Result) -> None:
        """Resource attributes that claim a tenant are overwritten with (or stripped of) the real one."""
        keys = self._c.tenant_keys
        for resource in resources(batch.request, batch.signal):
            attributes = resource.resource.attributes
            for i in range(len(attributes) - 1, -1, -1):
                kv = attributes[i]
                if kv.key in keys and not (kv.value.WhichOneof("value") == "string_value"
                                           and kv.value.string_value == batch.tenant):
                    result.changed += 1
                    result.count("tenant_claim_" + self._c.tenant_key_action)
                    if self._c.tenant_key_action == "drop":
                        del attributes[i]
                    else:
                        kv.value.Clear()
                        kv.value.string_value = batch.tenant

    # ------------------------------------------------------------ per signal

    def _span(self, ref: ItemRef, low: int, high: int) -> tuple[str, str] | None:
        span = ref.item
        if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE_ID:
            return "invalid_trace_id", f"trace id must be 16 bytes, not all zero (got {len(span.trace_id)} bytes)"
        if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN_ID:
            return "invalid_span_id", f"span id must be 8 bytes, not all zero (got {len(span.span_id)} bytes)"
        if span.parent_span_id and len(span.parent_span_id) != 8:
            return "invalid_parent_span_id", f"parent span id must be empty or 8 bytes (got {len(span.parent_span_id)})"
        if span.end_time_unix_nano < span.start_time_unix_nano:
            return "end_before_start", "span ends before it starts"
        problem = self._window(span.start_time_unix_nano, low, high) or self._window(span.end_time_unix_nano, low, high)
        if problem:
            return problem
        if len(span.events) > self._c.max_events:
            return "too_many_events", f"{len(span.events)} events, limit {self._c.max_events}"
        if len(span.links) > self._c.max_links:
            return "too_many_links", f"{len(span.links)} links, limit {self._c.max_links}"
        if len(span.name.encode()) > self._c.max_name_bytes:
            return "name_too_long", f"span name longer than {self._c.max_name_bytes} bytes"
        if not valid_tracestate(span.trace_state):
            return "invalid_tracestate", "trace_state is not valid W3C tracestate"
        for link in span.links:
            if len(link.trace_id) != 16 or len(link.span_id) != 8:
                return "invalid_link", "link trace id must be 16 bytes and span id 8 bytes"
            if not valid_tracestate(link.trace_state):
                return "invalid_tracestate", "a link's trace_state is not valid W3C tracestate"
        # Fast path: a span smaller than every length limit cannot hold an over-long key or string.
        small = span.ByteSize() <= min(self._c.max_string_bytes, self._c.max_name_bytes)
        if not small or len(span.attributes) > self._c.max_attributes or span.events or span.links:
            problem = self._attributes(span.attributes)
            for event in span.events:
                if problem:
                    break
                if self._window(event.time_unix_nano, low, high):
                    return "event_time_out_of_window", "an event's timestamp is outside the accepted window"
                if len(event.name.encode()) > self._c.max_name_bytes:  # (unbounded before; scrub scans names)
                    return "name_too_long", f"event name longer than {self._c.max_name_bytes} bytes"
                problem = self._attributes(event.attributes)
            for link in span.links:
                if problem:
                    break
                problem = self._attributes(link.attributes)
            return problem
        return self._depth(span.attributes)

    def _point(self, ref: ItemRef, low: int, high: int) -> tuple[str, str] | None:
        point, metric = ref.item, ref.metric
        problem = self._window(point.time_unix_nano, low, high)
        if problem:
            return problem
        if point.start_time_unix_nano and point.start_time_unix_nano > point.time_unix_nano:
            return "end_before_start", "data point's start time is after its time"
        kind = metric.WhichOneof("data")
        if kind == "sum" and metric.sum.is_monotonic and point.WhichOneof("value") is not None:
            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            cumulative = metric.sum.aggregation_temporality == _CUMULATIVE
            if value < 0 and cumulative:
                return "negative_monotonic_sum", f"monotonic cumulative sum {metric.name} is negative"
        elif kind == "histogram":
            buckets, bounds = len(point.bucket_counts), len(point.explicit_bounds)
            if buckets and buckets != bounds + 1:
                return "histogram_bucket_mismatch", f"{buckets} bucket counts for {bounds} bounds (need bounds + 1)"
            if buckets and sum(point.bucket_counts) != point.count:
                return ("histogram_count_mismatch",
                        f"bucket counts add up to {sum(point.bucket_counts)}, count is {point.count}")
            # "not a < b" rather than "b >= a": NaN compares false both ways and used to pass as sorted.
            if any(not b < a for a, b in zip(point.explicit_bounds[1:], point.explicit_bounds, strict=False)) \
                    or any(math.isnan(b) for b in point.explicit_bounds[:1]):
                return "histogram_bounds_unsorted", "explicit bounds must increase strictly"
        elif kind == "exponential_histogram":
            total = point.zero_count + sum(point.positive.bucket_counts) + sum(point.negative.bucket_counts)
            if total != point.count:
                return "histogram_count_mismatch", f"buckets add up to {total}, count is {point.count}"
        elif kind == "summary" and any(not 0.0 <= q.quantile <= 1.0 for q in point.quantile_values):
            return "summary_quantile_out_of_range", "summary quantiles must lie in [0, 1]"
        if len(metric.name.encode()) > self._c.max_name_bytes or not metric.name:
            return "invalid_metric_name", "metric name is empty or too long"
        problem = self._attributes(point.attributes)
        for exemplar in getattr(point, "exemplars", ()):  # (unchecked before; scrub scans them)
            problem = problem or self._attributes(exemplar.filtered_attributes)
        return problem

    def _log(self, ref: ItemRef, low: int, high: int) -> tuple[str, str] | None:
        record = ref.item
        if not 0 <= record.severity_number <= 24:
            return "invalid_severity", f"severity number {record.severity_number} is not in 0..24"
        for stamp in (record.time_unix_nano, record.observed_time_unix_nano):
            if stamp:
                problem = self._window(stamp, low, high)
                if problem:
                    return problem
        if record.trace_id and len(record.trace_id) != 16:
            return "invalid_trace_id", "log record trace id must be empty or 16 bytes"
        if record.span_id and len(record.span_id) != 8:
            return "invalid_span_id", "log record span id must be empty or 8 bytes"
        problem = self._value(record.body, 1)
        return problem or self._attributes(record.attributes)

    # ------------------------------------------------------------ shared checks

    @staticmethod
    def _window(stamp: int, low: int, high: int) -> tuple[str, str] | None:
        if stamp < low:
            return "too_old", "timestamp is older than validate.max_age_s before receipt"
        if stamp > high:
            return "in_future", "timestamp is more than validate.max_future_s after receipt"
        return None

    def _attributes(self, attributes: Any) -> tuple[str, str] | None:
        if len(attributes) > self._c.max_attributes:
            return "too_many_attributes", f"{len(attributes)} attributes, limit {self._c.max_attributes}"
        for kv in attributes:
            if len(kv.key.encode()) > self._c.max_name_bytes:
                return "attribute_key_too_long", f"attribute key longer than {self._c.max_name_bytes} bytes"
            problem = self._value(kv.value, 1)
            if problem:
                return problem
        return None

    def _depth(self, attributes: Any) -> tuple[str, str] | None:
        """Only the nesting check, for spans whose size already rules out over-long strings."""
        for kv in attributes:
            if kv.value.WhichOneof("value") in ("array_value", "kvlist_value"):
                problem = self._value(kv.value, 1)
                if problem:
                    return problem
        return None

    def _value(self, value: AnyValue, depth: int) -> tuple[str, str] | None:
        """Walk an AnyValue without recursion: depth, string and bytes lengths."""
        stack = [(value, depth)]
        limit = self._c.max_string_bytes
        while stack:
            current, level = stack.pop()
            kind = current.WhichOneof("value")
            if kind == "string_value":
                if len(current.string_value) > limit // 4 and len(current.string_value.encode()) > limit:
                    return "value_too_long", f"a string value is longer than {limit} bytes"
            elif kind == "bytes_value":
                if len(current.bytes_value) > limit:
                    return "value_too_long", f"a bytes value is longer than {limit} bytes"
            elif kind in ("array_value", "kvlist_value"):
                if level >= self._c.max_value_depth:
                    return "value_too_deep", f"a value nests deeper than {self._c.max_value_depth} levels"
                if kind == "array_value":
                    stack.extend((v, level + 1) for v in current.array_value.values)
                else:
                    stack.extend((kv.value, level + 1) for kv in current.kvlist_value.values)
        return None
