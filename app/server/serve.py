"""`token-broker serve`: uvicorn with the broker's protocol, TLS settings and shutdown."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.config.errors import exit_with_problems
from app.observability.logs import configure_logging, uvicorn_log_config
from app.server.protocol import SERVER_OPTIONS

GRACEFUL_SHUTDOWN_SECONDS = 30
# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are
# not set by this string; Python's ssl keeps its defaults for them, and the minimum is 1.2.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)


def tls_problems(settings: Settings) -> list[str]:
    """Whether the certificate and key can be read and belong together (uvicorn would stop
    with a traceback): one line per problem, naming the variable."""
    if not settings.tls_cert_file or not settings.tls_key_file:
        return []
    problems = []
    for variable, path in (
        ("BROKER_TLS_CERT_FILE", settings.tls_cert_file),
        ("BROKER_TLS_KEY_FILE", settings.tls_key_file),
    ):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"{variable}: the file cannot be read ({exc.strerror or exc})")
    if problems:
        return problems
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file
        )
    except ssl.SSLError:
        return [
            "BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE: not a PEM certificate and its private "
            "key (or the key does not match the certificate)"
        ]
    return []


def serve(settings: Settings, host: str, port: int, workers: int, keep_alive: int) -> None:
    """Serve until SIGTERM. One worker serves the app built from `settings`; several each
    build their own from the environment (each is a process), as uvicorn's workers must.

    With BROKER_METRICS_PORT, a second socket on the same host: the app serves /metrics there
    alone (app/web/ops_endpoints.py), so no proxy in front of the main port can publish it.
    """
    from app.main import create_app

    configure_logging(settings.log_level, settings.log_format)
    if settings.metrics_port == port:
        exit_with_problems([f"BROKER_METRICS_PORT: must differ from the serving port ({port})"])
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; /metrics sums them (prometheus-client's
        # multiprocess mode). Set before the workers start, as prometheus-client requires.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")
    config = uvicorn.Config(
        create_app(settings) if workers == 1 else "app.main:create_app",
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        log_config=uvicorn_log_config(),
        access_log=False,
        **{**SERVER_OPTIONS, "timeout_keep_alive": keep_alive},
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        ssl_ciphers=TLS12_CIPHERS,  # uvicorn's default ("TLSv1") also admits CBC suites
    )
    _run(config, _bind(config, settings.metrics_port))


def _bind(config: uvicorn.Config, metrics_port: int | None) -> list[socket.socket]:
    """The listening sockets, bound as uvicorn.run binds its one (exit 1 on failure)."""
    sockets = [config.bind_socket()]
    if metrics_port is not None:
        config.port, main_port = metrics_port, config.port
        try:
            sockets.append(config.bind_socket())
        finally:
            config.port = main_port
    return sockets


def _run(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """uvicorn.run's serving, on sockets bound beforehand: one process, or its supervisor of
    worker processes sharing them."""
    if config.workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
