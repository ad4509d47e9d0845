"""Command-line entry points: ``ghetl sandbox`` (wired in ghetl/cli.py) and ``python -m ghetl.sandbox``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..argtypes import port

DEFAULT_PORT = 8766
"""Not the status server's 8765, so that both run side by side with their defaults."""


def _counts(text: str) -> dict[str, int]:
    """'acme:500,globex:30' -> {'acme': 500, 'globex': 30}; a bare name gets 30 repositories."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, number = part.partition(":")
        try:
            counts[name.strip()] = int(number) if number else 30
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME:COUNT, got {part!r}") from None
        if counts[name.strip()] < 0:
            raise argparse.ArgumentTypeError(f"a repository count must be 0 or more, got {part!r}")
    return counts


def _per_minute(points: int | None) -> tuple[int, float] | None:
    return None if points is None else (points, 60.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the sandbox command, shared by ``ghetl sandbox`` and ``python -m ghetl.sandbox``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    parser.add_argument("--orgs", type=_counts, default=None, metavar="NAME:COUNT,...",
                        help='organizations and their repository counts, e.g. "acme:500,globex:30" (default acme:120)')
    parser.add_argument("--users", type=_counts, default=None, metavar="NAME:COUNT,...",
                        help='users and their repository counts, e.g. "octocat:12"')
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated data (default 7)")
    parser.add_argument("--token", action="append", default=None, metavar="TOKEN",
                        help="accepted token (repeatable); when given, other tokens get 401")
    parser.add_argument("--core-limit", type=int, default=5000, help="authenticated core rate limit per hour")
    parser.add_argument("--search-limit", type=int, default=30, help="authenticated search rate limit per minute")
    parser.add_argument("--graphql-limit", type=int, default=5000,
                        help="GraphQL rate limit in points per hour (POST /graphql)")
    parser.add_argument("--reset-seconds", type=int, default=3600, help="length of the core rate-limit window")
    parser.add_argument("--path-prefix", default="", help='serve under a prefix like GHES, e.g. "/api/v3"')
    parser.add_argument("--installation-token-seconds", type=float, default=3600.0, metavar="S",
                        help="lifetime of GitHub App installation tokens (GitHub: 3600; default 3600)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="N",
                        help="delay every API reply by N ms, serving others meanwhile (GitHub: 300-1000; default 0)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="refuse a caller's requests beyond N in flight with a secondary limit (GitHub: 100)")
    parser.add_argument("--rest-points-per-minute", type=int, default=None, metavar="N",
                        help="refuse a caller's REST requests beyond N a minute with a secondary limit (GitHub: 900)")
    parser.add_argument("--graphql-points-per-minute", type=int, default=None, metavar="N",
                        help="refuse GraphQL queries of a caller beyond N a minute likewise (GitHub: 2000)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, metavar="J",
                        help="vary that delay by up to J ms either way (default 0)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; prints one line saying what is served where."""
    from .sandbox import Sandbox

    try:
        sandbox = Sandbox(orgs=args.orgs, users=args.users, seed=args.seed, tokens=args.token,
                          core_limit=args.core_limit, search_limit=args.search_limit,
                          reset_seconds=args.reset_seconds, path_prefix=args.path_prefix,
                          graphql_limit=args.graphql_limit, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                          installation_token_seconds=args.installation_token_seconds,
                          max_concurrent=args.max_concurrent,
                          secondary_limit=_per_minute(args.rest_points_per_minute),
                          graphql_secondary_limit=_per_minute(args.graphql_points_per_minute))
    except ValueError as exc:
        print(f"ghetl: error: cannot start the sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        sandbox.start(host=args.host, port=args.port)
    except OSError as exc:
        print(f"ghetl: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"GitHub sandbox serving {sandbox.describe()} at {sandbox.url}", flush=True)
    try:
        stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sandbox.stop()
    print("GitHub sandbox stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m ghetl.sandbox",
                                     description="Serve a local GitHub REST and GraphQL API sandbox with generated "
                                                 "repositories and pull requests.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
