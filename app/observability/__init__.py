"""What the service tells Prometheus (GET /metrics)."""
