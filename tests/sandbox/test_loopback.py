"""The sandbox's servers listen on loopback only."""

from __future__ import annotations

from app.sandbox.loopback import base_url, bind_loopback


def test_sockets_are_bound_to_loopback_on_a_free_port() -> None:
    first, second = bind_loopback(), bind_loopback()
    try:
        assert first.getsockname()[0] == "127.0.0.1"
        assert first.getsockname()[1] != second.getsockname()[1]
        assert base_url(first) == f"http://127.0.0.1:{first.getsockname()[1]}"
    finally:
        first.close()
        second.close()
