"""`token-broker serve` arguments: the keep-alive is whole seconds, above the usual proxies."""

from __future__ import annotations

import pytest

from app.cli import build_parser


def test_the_default_keep_alive_outlasts_a_60_second_proxy() -> None:
    assert build_parser().parse_args(["serve"]).keep_alive > 60


def test_a_keep_alive_can_be_set_for_a_longer_lived_proxy() -> None:
    assert build_parser().parse_args(["serve", "--keep-alive", "620"]).keep_alive == 620


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "3601"])
def test_a_keep_alive_that_is_not_whole_seconds_in_range_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--keep-alive", value])
    assert exit_info.value.code == 2
    assert "--keep-alive: must be whole seconds from 1 to 3600" in capsys.readouterr().err


def test_the_port_comes_from_port_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import _port_from_environment

    monkeypatch.setenv("PORT", "9000")
    assert build_parser().parse_args(["serve"]).port is None  # resolved when serving
    assert _port_from_environment() == 9000
    monkeypatch.delenv("PORT")
    assert _port_from_environment() == 8080
