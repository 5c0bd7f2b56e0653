"""OTLP metrics to Prometheus remote write: naming rules, types, resource attributes, refusals, wire format."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from sinks.prometheus import convert, encode_write_request, label_name, metric_name

NOW_NS = 1_764_000_000_000_000_000


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
    gauge = scope.metrics.add(name="process.cpu.utilization", unit="1")
    gauge.gauge.data_points.add(as_double=0.25, time_unix_nano=NOW_NS)
    updown = scope.metrics.add(name="queue.size", unit="By")
    updown.sum.is_monotonic, updown.sum.aggregation_temporality = False, 2
    updown.sum.data_points.add(as_int=-3, time_unix_nano=NOW_NS)
    hist = scope.metrics.add(name="http.server.duration", unit="s")
    hist.histogram.aggregation_temporality = 2
    hist.histogram.data_points.add(count=6, sum=1.5, bucket_counts=[1, 2, 3], explicit_bounds=[0.1, 1.0],
                                   time_unix_nano=NOW_NS)
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


def _write_request_class() -> type:
    """prometheus.WriteRequest, built from its schema so the test decodes our bytes independently."""
    file = descriptor_pb2.FileDescriptorProto(name="remote.proto", package="prometheus", syntax="proto3")
    label = file.message_type.add(name="Label")
    label.field.add(name="name", number=1, type=9, label=1)
    label.field.add(name="value", number=2, type=9, label=1)
    sample = file.message_type.add(name="Sample")
    sample.field.add(name="value", number=1, type=1, label=1)
    sample.field.add(name="timestamp", number=2, type=3, label=1)
    series = file.message_type.add(name="TimeSeries")
    series.field.add(name="labels", number=1, type=11, label=3, type_name=".prometheus.Label")
    series.field.add(name="samples", number=2, type=11, label=3, type_name=".prometheus.Sample")
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
