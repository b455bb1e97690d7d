"""The configuration's one error: every broken rule, one line each, naming the variable."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """Configuration rules are broken: one line per problem, naming the variable and the rule
    only, never a value."""

    def __init__(self, *problems: str) -> None:
        super().__init__(problems[0] if len(problems) == 1 else "; ".join(problems))
        self.problems = list(problems)


if TYPE_CHECKING:
    from app.config.settings import Settings


def exit_with_problems(problems: list[str]) -> NoReturn:
    """Each problem on its own line on stderr, then exit 2: how a server refuses to start."""
    for problem in problems:
        print(f"configuration error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def settings_or_exit() -> Settings:
    """Settings from the environment, or every broken rule on stderr and exit 2."""
    from app.config.settings import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        exit_with_problems(exc.problems)


_ENV_NAMES = {
    "videodb_api_key": "VIDEO_DB_API_KEY",
    "VIDEO_DB_API_KEY": "VIDEO_DB_API_KEY",
    "VIDEODB_API_KEY": "VIDEO_DB_API_KEY",
    "videodb_api": "VIDEO_DB_API",
}


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    if field in _ENV_NAMES:
        return _ENV_NAMES[field]
    if field.isupper():
        return field
    return f"BROKER_{field.upper()}"


def describe_validation_errors(exc: ValidationError) -> list[str]:
    """One line per broken rule, naming the variable and the rule; never the value."""
    return [_describe(error) for error in exc.errors(include_input=False, include_url=False)]


def _describe(error: ErrorDetails) -> str:
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a setting a provider has"
    if not loc:
        return message
    where = env_name(loc[0])
    if loc[0] == "auth_issuers" and len(loc) > 1 and loc[1].isdigit():  # which provider, which key
        where += f": provider {int(loc[1]) + 1}"
        detail = [part for part in loc[2:] if not part.isdigit()]
        if not detail:
            return f"{where}: {message}"
        # our own rules read on from the name ("issuer must use"); pydantic's are sentences
        return f"{where}: {detail[0]}{' ' if message[:1].islower() else ': '}{message}"
    return f"{where}: {message}"
