"""The `token-broker` command: serve, check, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence

import uvicorn

from app.config import ConfigError, Settings, load_settings
from app.live_checks import PROBE_USER_ID, live_checks
from app.observability.logs import configure_logging, uvicorn_log_config
from app.web.server_protocol import KEEP_ALIVE_S, SERVER_OPTIONS

GRACEFUL_SHUTDOWN_SECONDS = 30
# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are
# not set by this string; Python's ssl keeps its defaults for them, and the minimum is 1.2.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)


def _default_port() -> int:
    raw = os.environ.get("PORT", "8080")
    return int(raw) if raw.isdigit() else 8080


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _refuse(exc.problems)
    tls = tls_problems(settings)
    if tls:
        return _refuse(tls)
    configure_logging(settings.log_level, settings.log_format)
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; /metrics sums them (prometheus-client's
        # multiprocess mode). Set before the workers start, as prometheus-client requires.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=uvicorn_log_config(),
        access_log=False,
        **{**SERVER_OPTIONS, "timeout_keep_alive": args.keep_alive},
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        ssl_ciphers=TLS12_CIPHERS,  # uvicorn's default ("TLSv1") also admits CBC suites
    )
    return 0


def _refuse(problems: list[str]) -> int:
    """Each configuration problem on its own line, on stderr; the exit status of `serve`."""
    for problem in problems:
        print(f"configuration error: {problem}", file=sys.stderr)
    return 2


def tls_problems(settings: Settings) -> list[str]:
    """Whether the certificate and key can be read and belong together (uvicorn would stop
    with a traceback): one line per problem, naming the variable."""
    if not settings.tls_cert_file or not settings.tls_key_file:
        return []
    problems = []
    for variable, path in (
        ("BROKER_TLS_CERT_FILE", settings.tls_cert_file),
        ("BROKER_TLS_KEY_FILE", settings.tls_key_file),
    ):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"{variable}: the file cannot be read ({exc.strerror or exc})")
    if problems:
        return problems
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file
        )
    except ssl.SSLError:
        return [
            "BROKER_TLS_CERT_FILE, BROKER_TLS_KEY_FILE: not a PEM certificate and its private "
            "key (or the key does not match the certificate)"
        ]
    return []


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
    if args.live:
        configure_logging("CRITICAL", "console")  # the probes' own warnings: the lines say it
        results += asyncio.run(live_checks(settings))
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
    serve.add_argument("--port", type=int, default=_default_port())
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--keep-alive",
        type=_seconds,
        default=KEEP_ALIVE_S,
        metavar="SECONDS",
        help="close connections idle this long; keep it above the idle timeout of the "
        f"proxy or load balancer in front (default {KEEP_ALIVE_S})",
    )
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("check", help="validate the configuration (exit 1 if broken)")
    check.add_argument(
        "--live",
        action="store_true",
        help="also prove what is live: VideoDB accepts the key (one token of the shortest "
        f"lifetime for user '{PROBE_USER_ID}'), Redis answers the broker's commands, each "
        "identity provider's keys load",
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
