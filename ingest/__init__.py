"""OTLP/HTTP and OTLP/gRPC ingest gateway."""
