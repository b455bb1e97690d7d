"""videodb-token-broker: short-lived VideoDB session tokens for authenticated end users."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("videodb-token-broker")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
