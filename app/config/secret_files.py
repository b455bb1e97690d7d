"""Secrets from files: every secret setting can also be read from the file `<NAME>_FILE` names.

Kubernetes mounts a Secret as files and compose has `secrets:`; a file keeps the secret out of
the process environment (which `docker inspect`, `/proc/<pid>/environ` and crash reporters
show). The convention is the official database images' (`POSTGRES_PASSWORD_FILE`): setting
both `<NAME>` and `<NAME>_FILE` is an error, and the file's trailing newline is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

# Settings field -> the environment variables that may hold it (first: the contract's name).
# A secret setting added later is added here, and gets its `_FILE` variable with no more work.
SECRET_VARIABLES: dict[str, tuple[str, ...]] = {
    "videodb_api_key": ("VIDEO_DB_API_KEY", "VIDEODB_API_KEY"),
    "auth_hs256_secret": ("BROKER_AUTH_HS256_SECRET",),
    "auth_hs256_next_secret": ("BROKER_AUTH_HS256_NEXT_SECRET",),
    "redis_url": ("BROKER_REDIS_URL",),
    "redis_sentinel_password": ("BROKER_REDIS_SENTINEL_PASSWORD",),
    "redis_encryption_key": ("BROKER_REDIS_ENCRYPTION_KEY",),
    "redis_previous_encryption_key": ("BROKER_REDIS_PREVIOUS_ENCRYPTION_KEY",),
    "capture_webhook_secret": ("BROKER_CAPTURE_WEBHOOK_SECRET",),
}
MAX_SECRET_FILE_BYTES = 64 * 1024  # a key, a secret or a URL: a mounted directory is a mistake


class SecretFileError(ValueError):
    """A `_FILE` variable that cannot be used; one line per problem, naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def file_variable(field: str) -> str:
    """The `_FILE` variable of a secret setting."""
    return f"{SECRET_VARIABLES[field][0]}_FILE"


def read_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """field -> secret, for each secret whose `_FILE` variable is set; every problem at once."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for field, names in SECRET_VARIABLES.items():
        variable = file_variable(field)
        path = environ.get(variable)
        if path is None or not path.strip():
            continue  # unset, or empty as a compose file's ${X:-} leaves it
        direct = [name for name in names if environ.get(name)]
        if direct:
            problems.append(f"{variable} and {direct[0]} are both set: keep one")
            continue
        try:
            values[field] = _read(Path(path))
        except OSError as exc:
            problems.append(f"{variable}: the file cannot be read ({exc.strerror or exc})")
        except ValueError as exc:
            problems.append(f"{variable}: {exc}")
    if problems:
        raise SecretFileError(problems)
    return values


def _read(path: Path) -> str:
    with path.open("rb") as file:
        raw = file.read(MAX_SECRET_FILE_BYTES + 1)
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"the file is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")  # what `echo` and editors leave


class SecretFilesSource(PydanticBaseSettingsSource):
    """A pydantic-settings source of the secrets that `_FILE` variables name."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._values = read_secret_files(os.environ)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)
