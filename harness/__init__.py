"""What the tests and the benchmarks both run: the broker as a process on a real port, ASGI
apps on loopback threads, an OTLP receiver. Neither imports the other; both import this."""
