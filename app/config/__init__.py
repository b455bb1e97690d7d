"""The broker's configuration: its options, every rule about them, and one error type.

It imports no other part of the broker (the families import it).
"""

from app.config.errors import ConfigError
from app.config.settings import Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
