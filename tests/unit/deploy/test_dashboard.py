"""The Grafana dashboard and its provisioning: every query parses as PromQL and asks only for metrics
and labels the code really exports, every panel reads the provisioned Prometheus."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from ingest.metrics import GatewayMetrics
from processors.forgery.metrics import ForgeryMetrics
from processors.runtime import StageMetrics
from sinks.runtime import SinkMetrics

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rampart.json"
PACKAGES = ("rampart", "ingest", "processors", "sinks", "schemas")

# Panels for metrics of parts not built yet, so the dashboard is ready when they land. Once the code
# registers one, test_planned_metrics_are_not_registered_yet fails: drop it from here then.
PLANNED: dict[str, frozenset[str]] = {}
# Labels Prometheus adds to every series it scrapes (deploy/compose/prometheus.yml adds service).
TARGET_LABELS = frozenset({"job", "instance", "service"})
# Grafana's built-in variables and the dashboard's own, replaced by valid stand-ins before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "summary": ("", "_sum", "_count", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created")}


def sample_names(family: str, kind: str, labels: frozenset[str]) -> dict[str, frozenset[str]]:
    """The series names prometheus_client exposes for a metric family, with their label names."""
    return {family + suffix: labels | ({"le"} if suffix == "_bucket" else set()) for suffix in SUFFIXES[kind]}


def registry_metrics() -> dict[str, frozenset[str]]:
    """From the metric sets the code builds, each into a fresh registry."""
    registry = CollectorRegistry()
    found: dict[str, frozenset[str]] = {}
    for metric_set in (GatewayMetrics.create(registry), StageMetrics.create(registry), SinkMetrics.create(registry),
                       ForgeryMetrics.create(registry)):
        for metric in metric_set:
            assert isinstance(metric, MetricWrapperBase)
            (family,) = metric.describe()
            # prometheus_client keeps label names only privately; they are what the series carry.
            found |= sample_names(family.name, family.type, frozenset(metric._labelnames))
    return found


def source_metrics() -> dict[str, frozenset[str] | None]:
    """Every Counter/Gauge/Histogram/Summary built with a literal name anywhere in the packages, e.g.
    the consumer-lag gauge that run_consumer builds inside faust's start-up. Labels are None unless
    given as a literal list."""
    found: dict[str, frozenset[str] | None] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id.lower() in SUFFIXES and node.args
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    continue
                given = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "labelnames"), ast.List(elts=[]))
                literal = isinstance(given, ast.List | ast.Tuple) and all(
                    isinstance(e, ast.Constant) for e in given.elts)
                labels = frozenset(e.value for e in given.elts) if literal else frozenset()  # type: ignore[attr-defined]
                for name, series_labels in sample_names(node.args[0].value, node.func.id.lower(), labels).items():
                    found[name] = series_labels if literal else None
    return found


@pytest.fixture(scope="module")
def known_metrics() -> dict[str, frozenset[str] | None]:
    known: dict[str, frozenset[str] | None] = dict(source_metrics())
    known.update(registry_metrics())
    return known


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in dashboard["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))
    return flat


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


def parse(expr: str) -> promql_parser.Expr:
    for variable, stand_in in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, stand_in)
    expr = re.sub(r"\$\{?\w+\}?", "x", expr)  # the dashboard's own variables, inside label matchers
    return promql_parser.parse(expr)


def nodes(expr: promql_parser.Expr) -> list[promql_parser.Expr]:
    found: list[promql_parser.Expr] = []
    promql_parser.walk(expr, found.append)
    return found


def selector_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    return next(str(m.value) for m in selector.matchers.matchers if m.name == "__name__")


def test_the_metric_scan_sees_what_the_registries_hold(known_metrics: dict[str, frozenset[str] | None]) -> None:
    assert set(registry_metrics()) <= set(source_metrics())
    assert "rampart_consumer_lag_records" in known_metrics


def test_dashboard_is_provisionable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_has_a_title_and_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = provisioned["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in panels(dashboard):
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == expected, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable.get("datasource", expected) == expected, variable["name"]


def test_every_query_asks_for_exported_metrics_and_labels(dashboard: dict[str, Any],
                                                          known_metrics: dict[str, frozenset[str] | None]) -> None:
    known = {**known_metrics, **PLANNED}
    for title, expr in queries(dashboard):
        try:
            tree = parse(expr)
        except ValueError as exc:
            pytest.fail(f"{title}: {expr!r} is not PromQL: {exc}")
        used: set[str] = set(TARGET_LABELS)
        for selector in (n for n in nodes(tree) if isinstance(n, promql_parser.VectorSelector)):
            name = selector_name(selector)
            assert name in known, f"{title}: {name} is not a metric the code exports"
            labels = known[name]
            if labels is None:
                continue
            used |= labels
            for matcher in selector.matchers.matchers:
                assert matcher.name in labels | TARGET_LABELS | {"__name__"}, f"{title}: {name} has no {matcher.name}"
        grouping = {label for node in nodes(tree) if isinstance(node, promql_parser.AggregateExpr) and node.modifier
                    for label in node.modifier.labels}
        assert grouping <= used, f"{title}: groups by {grouping - used}, which no series here has"


def test_template_variables_ask_for_exported_labels(dashboard: dict[str, Any],
                                                    known_metrics: dict[str, frozenset[str] | None]) -> None:
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"{variable['name']}: {query}"
        labels = known_metrics.get(match[1])
        assert labels is not None and match[2] in labels, f"{variable['name']}: {match[1]} has no label {match[2]}"


def test_planned_metrics_are_not_registered_yet(known_metrics: dict[str, frozenset[str] | None]) -> None:
    assert not set(PLANNED) & set(known_metrics), "the code exports it now: remove it from PLANNED"


def test_grafana_finds_its_files_where_compose_mounts_them() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    mounts = dict(reversed(v.rsplit(":", 2)[:2]) for v in grafana["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rampart.yaml").read_text())
    (dashboards_path,) = {p["options"]["path"] for p in provider["providers"]}
    assert mounts[dashboards_path] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_path}/{DASHBOARD.name}"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in compose["services"]
