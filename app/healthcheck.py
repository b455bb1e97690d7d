"""`python -m app.healthcheck [path]`: the container's health check, run inside it.

Asks the broker on this host, at `$PORT` (default 8080), for `path` (default `/healthz`):
over HTTPS when `BROKER_TLS_CERT_FILE` is set, since the broker then speaks nothing else.
That certificate names the public host, not 127.0.0.1, so it is not verified here: the
question is only whether the local process answers, and nothing secret is sent. Exit status
0 on a 200, else 1. Standard library only, and no settings are parsed, so the check works
the same whatever the configuration holds.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

TIMEOUT_S = 2.0


def probe_url(path: str) -> tuple[str, ssl.SSLContext | None]:
    """The local URL to ask, and the TLS context for it (None for plain HTTP)."""
    port = os.environ.get("PORT", "8080")
    if not os.environ.get("BROKER_TLS_CERT_FILE"):
        return f"http://127.0.0.1:{port}{path}", None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own process on loopback, see above
    return f"https://127.0.0.1:{port}{path}", context


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url, context = probe_url(args[0] if args else "/healthz")
    try:
        # a fixed loopback URL built above, never user input
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:  # noqa: S310
            return 0 if answer.status == 200 else 1
    except (OSError, ValueError):  # refused, timed out, TLS failure, or an HTTP error status
        return 1


if __name__ == "__main__":
    sys.exit(main())
