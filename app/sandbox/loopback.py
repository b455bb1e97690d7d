"""Serve ASGI apps on loopback sockets in the current event loop."""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp


def bind_loopback(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    """http://127.0.0.1:<port> for a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def server_for(app: ASGIApp, **options: object) -> uvicorn.Server:
    """A quiet uvicorn server for a stand-in."""
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="auto", **options)  # type: ignore[arg-type]
    return uvicorn.Server(config)
