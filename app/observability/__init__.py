"""What operators see: JSON logs, Prometheus metrics, and fingerprints in place of secrets."""
