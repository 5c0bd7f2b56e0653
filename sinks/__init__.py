"""Exporters to OTLP backends (Jaeger) and Prometheus remote write."""
