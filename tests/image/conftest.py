"""The image tests use the integration tests' stand-ins on the host."""

from tests.integration.conftest import idp, videodb_server

__all__ = ["idp", "videodb_server"]
