"""Each sink writes the tenant into its own configured resource attribute, whatever the data claimed."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from rampart.config import load_config
from schemas.envelope import Envelope, PayloadFormat, Signal
from sinks.prometheus import convert
from sinks.runtime import export_request, tenant_attribute


def envelope() -> Envelope:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "cart"
    rm.resource.attributes.add(key="org").value.string_value = "forged"  # the data's own claim
    gauge = rm.scope_metrics.add().metrics.add(name="queue.depth")
    gauge.gauge.data_points.add(as_int=3, time_unix_nano=1_764_000_000_000_000_000)
    return Envelope("b1", "acme", "key-1", Signal.METRICS, PayloadFormat.OTLP_PROTO, 0, "gw",
                    request.SerializeToString())


def test_the_prometheus_sink_has_its_own_tenant_attribute(tmp_path: Path) -> None:
    path = tmp_path / "rampart.yaml"
    path.write_text("sinks:\n  otlp:\n    tenant_attribute: tenant.id\n")
    config = load_config(str(path), env={"RAMPART__SINKS__PROMETHEUS__TENANT_ATTRIBUTE": "org"})
    assert tenant_attribute("prometheus", config) == "org"
    assert tenant_attribute("otlp", config) == "tenant.id"

    request = export_request(Signal.METRICS, envelope(), tenant_attribute("prometheus", config))
    converted = convert(ExportMetricsServiceRequest.FromString(request.payload), request.tenant)
    (info,) = [dict(labels) for labels in converted.series if dict(labels)["__name__"] == "target_info"]
    assert info["org"] == "acme" and "tenant_id" not in info
