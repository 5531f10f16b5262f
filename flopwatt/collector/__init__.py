"""The collector: gRPC ingest with exactly-once storage, physics comparison, Prometheus metrics."""
