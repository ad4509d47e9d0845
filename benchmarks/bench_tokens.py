"""Full sync of 10 000 sandbox repositories with one token, then with three, each token limited
to 40 points per 20 s window: the wall time says what spreading a sync over tokens saves.

The listing is about 101 requests; one token (40 points, 4 of them kept as the reserve) has to
wait for two refills, three tokens have enough in their first window. The sandbox runs in its
own process, started afresh for each case so that both begin with full buckets.

    .venv/bin/python benchmarks/bench_tokens.py [--repos 10000] [--limit 40] [--window 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bench_embedded import free_port

if TYPE_CHECKING:
    from ghetl.sync import SyncResult

TOKENS = {"BENCH_A_GITHUB_TOKEN": "ghp_benchTokenA000000000000000000000000000",
          "BENCH_B_GITHUB_TOKEN": "ghp_benchTokenB000000000000000000000000000",
          "BENCH_C_GITHUB_TOKEN": "ghp_benchTokenC000000000000000000000000000"}


@contextlib.contextmanager
def sandbox_process(repos: int, limit: int, window: int) -> Iterator[str]:
    import socket

    port = free_port()
    tokens = [arg for value in TOKENS.values() for arg in ("--token", value)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ghetl.sandbox", "--port", str(port), "--orgs", f"bench:{repos}",
         "--core-limit", str(limit), "--reset-seconds", str(window), *tokens],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the sandbox did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(names: list[str], args: argparse.Namespace) -> tuple[float, SyncResult]:
    from ghetl import db, migrate, tenants
    from ghetl.broker import MemoryBroker
    from ghetl.sync import sync

    with tempfile.TemporaryDirectory() as tmp, sandbox_process(args.repos, args.limit, args.window) as api_url:
        engine = db.engine(f"sqlite:///{tmp}/bench.db")
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, "bench")
            tenants.add_integration(conn, "bench", "bench", api_url=api_url, token_env=",".join(names))
        started = time.perf_counter()
        result = sync("bench", engine=engine, broker=MemoryBroker(), full=True)
        wall = time.perf_counter() - started
        engine.dispose()
    return wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=40, help="core points per window and token")
    parser.add_argument("--window", type=int, default=20, help="seconds of the rate-limit window")
    args = parser.parse_args()

    os.environ.update(TOKENS)
    os.environ.pop("GHETL_EMBEDDER", None)
    os.environ["GHETL_RATE_LIMIT_MAX_WAIT"] = str(args.window * 2)
    print(f"{args.repos} repositories, {args.limit} core points per {args.window} s window per token")
    for names in (list(TOKENS)[:1], list(TOKENS)):
        wall, result = run(names, args)
        stats = result.stats
        print(f"  {len(names)} token{'s' if len(names) > 1 else ' '}  {result.overall:8}  "
              f"wall {wall:6.1f} s  waited {stats['waited_seconds']:5.1f} s in {stats['rate_limit_waits']} wait(s)  "
              f"{result.rate_limit_points} points")


if __name__ == "__main__":
    main()
