"""The one client of VideoDB: calls carrying the key, their retries and the circuit breaker."""
