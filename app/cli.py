"""The `token-broker` command: serve, check, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from app.config import ConfigError, load_settings
from app.config.errors import exit_with_problems, settings_or_exit
from app.live_checks import PROBE_USER_ID, live_checks
from app.observability.logs import configure_logging
from app.server.protocol import KEEP_ALIVE_S
from app.server.serve import serve, tls_problems


def _port_from_environment() -> int:
    """PORT (the image honours it), 8080 when unset; anything else is one configuration line,
    never a silent 8080."""
    raw = os.environ.get("PORT", "").strip()
    if not raw:
        return 8080
    if not raw.isdigit() or int(raw) > 65535:
        exit_with_problems(["PORT: must be a port number from 0 to 65535"])
    return int(raw)


def _serve(args: argparse.Namespace) -> int:
    settings = settings_or_exit()
    port = _port_from_environment() if args.port is None else args.port
    tls = tls_problems(settings)
    if tls:
        exit_with_problems(tls)
    serve(settings, args.host, port, args.workers, args.keep_alive)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"FAIL configuration: {problem}")
        return 1
    tls = tls_problems(settings)
    results = [(False, f"configuration: {problem}") for problem in tls] or [
        (True, f"configuration: valid ({settings.key_source})")
    ]
    if not tls:  # the neighbours are tried once the configuration holds
        configure_logging("CRITICAL", "console")  # the probes' own warnings: the lines say it
        results += asyncio.run(live_checks(settings, live=args.live))
    for ok, line in results:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    return 0 if all(ok for ok, _ in results) else 1


def _demo(args: argparse.Namespace) -> int:
    from app.sandbox.demo import run_demo

    configure_logging("INFO", "console")
    try:
        asyncio.run(run_demo(args.port, args.providers))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"demo could not start: {exc.strerror} (try --port)", file=sys.stderr)
        return 1
    return 0


def _workers(raw: str) -> int:
    """A number of worker processes, for argparse: 0 would serve nothing."""
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 256")
    return int(raw)


def _port(raw: str) -> int:
    """A TCP port, for argparse (0: any free port)."""
    if not raw.isdigit() or int(raw) > 65535:
        raise argparse.ArgumentTypeError("must be a port number from 0 to 65535")
    return int(raw)


def _seconds(raw: str) -> int:
    """A whole number of seconds from 1 to 3600, for argparse."""
    if not raw.isdigit() or not 1 <= int(raw) <= 3600:
        raise argparse.ArgumentTypeError("must be whole seconds from 1 to 3600")
    return int(raw)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="token-broker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the production server")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=_port, default=None, help="default: PORT, else 8080")
    serve.add_argument("--workers", type=_workers, default=1)
    serve.add_argument(
        "--keep-alive",
        type=_seconds,
        default=KEEP_ALIVE_S,
        metavar="SECONDS",
        help="close connections idle this long; keep it above the idle timeout of the "
        f"proxy or load balancer in front (default {KEEP_ALIVE_S})",
    )
    serve.set_defaults(handler=_serve)
    check = commands.add_parser(
        "check", help="validate the configuration and load the signing keys (exit 1 if not)"
    )
    check.add_argument(
        "--live",
        action="store_true",
        help="also prove what is live: VideoDB accepts the key (one token of the shortest "
        f"lifetime for user '{PROBE_USER_ID}'), Redis answers the broker's commands",
    )
    check.set_defaults(handler=_check)
    demo = commands.add_parser("demo", help="a local sandbox: no account, no identity provider")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument(
        "--providers",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two development issuers, configured as BROKER_AUTH_ISSUERS",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `token-broker` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
