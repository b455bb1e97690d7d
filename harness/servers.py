"""Run an ASGI app on a real loopback port in a background thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from app.sandbox.loopback import base_url, bind_loopback


class ThreadedServer:
    """A uvicorn server on 127.0.0.1 in its own thread, stoppable and restartable."""

    def __init__(self, app: ASGIApp, port: int = 0, tls: tuple[Path, Path] | None = None) -> None:
        self.app = app
        self._tls = tls  # (certificate, key): serve HTTPS
        self._sock = bind_loopback(port)
        self.port: int = self._sock.getsockname()[1]
        self.url = base_url(self._sock).replace("http://", "https://" if tls else "http://")
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ThreadedServer:
        """Serve until stop()."""
        if self._sock.fileno() == -1:
            self._sock = bind_loopback(self.port)
        cert, key = self._tls or (None, None)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=cert,
            ssl_keyfile=key,
        )
        self._server = uvicorn.Server(config)
        sock = self._sock
        server = self._server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and close the port: clients then see 'connection refused'."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._sock.close()
