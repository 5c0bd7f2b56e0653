"""OTLP metrics to Prometheus remote write: naming rules, types, resource attributes, refusals, wire format."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from sinks.prometheus import EXEMPLAR_LABELS_MAX_CHARS, Exemplar, convert, encode_write_request, label_name, metric_name

NOW_NS = 1_764_000_000_000_000_000
TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))


def add_exemplar(point: Any, value: float, at_ns: int, **attributes: str) -> None:
    e = point.exemplars.add(as_double=value, time_unix_nano=at_ns, trace_id=TRACE, span_id=SPAN)
    for key, text in attributes.items():
        e.filtered_attributes.add(key=key).value.string_value = text


def request() -> ExportMetricsServiceRequest:
    r = ExportMetricsServiceRequest()
    rm = r.resource_metrics.add()
    for key, value in (("service.name", "cart"), ("service.namespace", "shop"), ("service.instance.id", "pod-1"),
                       ("k8s.pod.name", "cart-7d9")):
        rm.resource.attributes.add(key=key).value.string_value = value
    scope = rm.scope_metrics.add()
    counter = scope.metrics.add(name="http.server.requests", unit="{request}")
    counter.sum.is_monotonic, counter.sum.aggregation_temporality = True, 2
    p = counter.sum.data_points.add(as_int=7, time_unix_nano=NOW_NS)
    p.attributes.add(key="http.route").value.string_value = "/cart"
    add_exemplar(p, 1.0, NOW_NS - 5_000_000, **{"user.tier": "gold"})
    gauge = scope.metrics.add(name="process.cpu.utilization", unit="1")
    add_exemplar(gauge.gauge.data_points.add(as_double=0.25, time_unix_nano=NOW_NS), 0.25, NOW_NS)
    updown = scope.metrics.add(name="queue.size", unit="By")
    updown.sum.is_monotonic, updown.sum.aggregation_temporality = False, 2
    add_exemplar(updown.sum.data_points.add(as_int=-3, time_unix_nano=NOW_NS), -3, NOW_NS)
    hist = scope.metrics.add(name="http.server.duration", unit="s")
    hist.histogram.aggregation_temporality = 2
    hp = hist.histogram.data_points.add(count=6, sum=1.5, bucket_counts=[1, 2, 3], explicit_bounds=[0.1, 1.0],
                                        time_unix_nano=NOW_NS)
    # 0.1 lies in the first bucket, (-inf, 0.1]; listed newest first, to be sent oldest first.
    for observed, ms_ago in ((7.5, 1), (0.5, 2), (0.1, 3), (0.05, 4)):
        add_exemplar(hp, observed, NOW_NS - ms_ago * 1_000_000)
    summary = scope.metrics.add(name="rpc.latency", unit="ms")
    summary.summary.data_points.add(count=4, sum=20.0, time_unix_nano=NOW_NS).quantile_values.add(quantile=0.5,
                                                                                                 value=4.0)
    delta = scope.metrics.add(name="jobs.done")
    delta.sum.is_monotonic, delta.sum.aggregation_temporality = True, 1
    delta.sum.data_points.add(as_int=1, time_unix_nano=NOW_NS)
    expo = scope.metrics.add(name="expo")
    expo.exponential_histogram.aggregation_temporality = 2
    expo.exponential_histogram.data_points.add(count=0, time_unix_nano=NOW_NS)
    return r


def samples() -> dict[str, float]:
    out = {}
    for labels, points in convert(request(), "acme").series.items():
        d = dict(labels)
        name = d.pop("__name__")
        extra = ",".join(f"{k}={v}" for k, v in sorted(d.items()) if k in ("le", "quantile", "http_route"))
        out[f"{name}{{{extra}}}"] = points[0][0]
    return out


def test_names_follow_the_compatibility_rules() -> None:
    assert metric_name("http.server.requests", "{request}", counter=True, gauge=False) == "http_server_requests_total"
    assert metric_name("http.server.duration", "s", counter=False, gauge=False) == "http_server_duration_seconds"
    assert metric_name("process.cpu.utilization", "1", counter=False, gauge=True) == "process_cpu_utilization_ratio"
    assert metric_name("throughput", "By/s", counter=False, gauge=True) == "throughput_bytes_per_second"
    assert metric_name("done_total", "", counter=True, gauge=False) == "done_total"
    assert metric_name("2xx.count", "", counter=False, gauge=True) == "_2xx_count"
    assert label_name("http.route") == "http_route" and label_name("0day") == "key_0day"
    assert label_name("_private") == "_private" and label_name(".dot") == "key_dot"


def test_every_type_is_converted() -> None:
    got = samples()
    assert got["http_server_requests_total{http_route=/cart}"] == 7
    assert got["process_cpu_utilization_ratio{}"] == 0.25
    assert got["queue_size_bytes{}"] == -3
    assert [got[f"http_server_duration_seconds_bucket{{le={le}}}"] for le in ("0.1", "1.0", "+Inf")] == [1, 3, 6]
    assert got["http_server_duration_seconds_sum{}"] == 1.5 and got["http_server_duration_seconds_count{}"] == 6
    assert got["rpc_latency_milliseconds{quantile=0.5}"] == 4.0 and got["rpc_latency_milliseconds_count{}"] == 4


def test_resource_becomes_job_instance_and_target_info() -> None:
    conversion = convert(request(), "acme")
    info = [dict(labels) for labels in conversion.series if dict(labels)["__name__"] == "target_info"]
    assert info == [{"__name__": "target_info", "job": "shop/cart", "instance": "pod-1", "tenant": "acme",
                     "k8s_pod_name": "cart-7d9"}]
    for labels in conversion.series:
        assert dict(labels)["job"] == "shop/cart" and dict(labels)["tenant"] == "acme"


def test_delta_and_exponential_histograms_are_refused_with_reasons() -> None:
    conversion = convert(request(), "acme")
    assert conversion.refused == {"delta_temporality": 1, "exponential_histogram": 1}
    assert not any("jobs_done" in dict(labels)["__name__"] for labels in conversion.series)


def exemplars_by_series() -> dict[str, list[Exemplar]]:
    conversion = convert(request(), "acme")
    out = {}
    for labels, exemplars in conversion.exemplars.items():
        d = dict(labels)
        out[f"{d['__name__']}{{{d.get('le', '')}}}"] = exemplars
    return out


def test_exemplars_go_to_the_bucket_that_holds_their_value_and_to_the_counter() -> None:
    got = exemplars_by_series()
    ms = NOW_NS // 1_000_000
    assert {k: [(e.value, e.timestamp_ms) for e in v] for k, v in got.items()} == {
        "http_server_duration_seconds_bucket{0.1}": [(0.1, ms - 3), (0.05, ms - 4)],
        "http_server_duration_seconds_bucket{1.0}": [(0.5, ms - 2)],
        "http_server_duration_seconds_bucket{+Inf}": [(7.5, ms - 1)],
        "http_server_requests_total{}": [(1.0, ms - 5)],
    }  # and none on the gauge or the non-monotonic sum, as the specification says
    (counted,) = got["http_server_requests_total{}"]
    assert counted.labels == (("span_id", SPAN.hex()), ("trace_id", TRACE.hex()), ("user_tier", "gold"))


def counter_exemplars(r: ExportMetricsServiceRequest) -> list[Exemplar]:
    return next(v for k, v in convert(r, "acme").exemplars.items() if dict(k)["__name__"].endswith("_total"))


def test_exemplar_attributes_that_would_break_the_label_limit_are_left_out() -> None:
    r = request()
    point = r.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    del point.exemplars[:]
    # The ids take 63 characters: "a" (61) fits, "b" (71) then would not, "c" (4) still does.
    add_exemplar(point, 1.0, NOW_NS, a="x" * 60, b="y" * 70, c="z" * 3)
    (exemplar,) = counter_exemplars(r)
    labels = dict(exemplar.labels)
    assert labels.keys() == {"trace_id", "span_id", "a", "c"}
    assert sum(len(k) + len(v) for k, v in labels.items()) == EXEMPLAR_LABELS_MAX_CHARS
    del point.exemplars[:]
    point.exemplars.add(as_int=2, time_unix_nano=NOW_NS).filtered_attributes.add(key="k").value.string_value = "v"
    assert counter_exemplars(r) == [Exemplar((("k", "v"),), 2.0, NOW_NS // 1_000_000)]  # no trace: no id labels


def _write_request_class() -> Any:
    """prometheus.WriteRequest, built from its schema so the test decodes our bytes independently."""
    file = descriptor_pb2.FileDescriptorProto(name="remote.proto", package="prometheus", syntax="proto3")
    label = file.message_type.add(name="Label")
    label.field.add(name="name", number=1, type=9, label=1)
    label.field.add(name="value", number=2, type=9, label=1)
    sample = file.message_type.add(name="Sample")
    sample.field.add(name="value", number=1, type=1, label=1)
    sample.field.add(name="timestamp", number=2, type=3, label=1)
    exemplar = file.message_type.add(name="Exemplar")
    exemplar.field.add(name="labels", number=1, type=11, label=3, type_name=".prometheus.Label")
    exemplar.field.add(name="value", number=2, type=1, label=1)
    exemplar.field.add(name="timestamp", number=3, type=3, label=1)
    series = file.message_type.add(name="TimeSeries")
    series.field.add(name="labels", number=1, type=11, label=3, type_name=".prometheus.Label")
    series.field.add(name="samples", number=2, type=11, label=3, type_name=".prometheus.Sample")
    series.field.add(name="exemplars", number=3, type=11, label=3, type_name=".prometheus.Exemplar")
    write = file.message_type.add(name="WriteRequest")
    write.field.add(name="timeseries", number=1, type=11, label=3, type_name=".prometheus.TimeSeries")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


def test_wire_format_is_a_valid_write_request_with_sorted_labels() -> None:
    conversion = convert(request(), "acme")
    decoded = _write_request_class().FromString(encode_write_request(conversion))
    assert len(decoded.timeseries) == len(conversion.series)
    for series in decoded.timeseries:
        names = [label.name for label in series.labels]
        assert names == sorted(names) and "__name__" in names
        assert series.samples[0].timestamp == NOW_NS // 1_000_000


def test_exemplars_are_encoded_on_their_series_oldest_first() -> None:
    decoded = _write_request_class().FromString(encode_write_request(convert(request(), "acme")))
    sent = {}
    for series in decoded.timeseries:
        labels = {label.name: label.value for label in series.labels}
        if series.exemplars:
            sent[f"{labels['__name__']}{{{labels.get('le', '')}}}"] = [
                (e.value, e.timestamp, {label.name: label.value for label in e.labels}) for e in series.exemplars]
    ms = NOW_NS // 1_000_000
    ids = {"trace_id": TRACE.hex(), "span_id": SPAN.hex()}
    assert sent == {
        "http_server_duration_seconds_bucket{0.1}": [(0.05, ms - 4, ids), (0.1, ms - 3, ids)],
        "http_server_duration_seconds_bucket{1.0}": [(0.5, ms - 2, ids)],
        "http_server_duration_seconds_bucket{+Inf}": [(7.5, ms - 1, ids)],
        "http_server_requests_total{}": [(1.0, ms - 5, {**ids, "user_tier": "gold"})],
    }


def test_without_bucket_counts_exemplars_go_to_the_inf_bucket_and_a_nan_nowhere() -> None:
    r = ExportMetricsServiceRequest()
    hist = r.resource_metrics.add().scope_metrics.add().metrics.add(name="lag", unit="s")
    hist.histogram.aggregation_temporality = 2
    point = hist.histogram.data_points.add(count=2, sum=4.0, time_unix_nano=NOW_NS)
    add_exemplar(point, 3.0, NOW_NS)
    add_exemplar(point, float("nan"), NOW_NS)
    exemplars = {dict(k)["le"]: [e.value for e in v] for k, v in convert(r, "acme").exemplars.items()}
    assert exemplars == {"+Inf": [3.0]}
