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
import tempfile
import time
from typing import TYPE_CHECKING

import bench_embedded

if TYPE_CHECKING:
    from ghetl.pipeline.sync import SyncResult

TOKENS = {"BENCH_A_GITHUB_TOKEN": "ghp_benchTokenA000000000000000000000000000",
          "BENCH_B_GITHUB_TOKEN": "ghp_benchTokenB000000000000000000000000000",
          "BENCH_C_GITHUB_TOKEN": "ghp_benchTokenC000000000000000000000000000"}


def sandbox_process(repos: int, limit: int, window: int) -> contextlib.AbstractContextManager[str]:
    """The benchmark sandbox knowing the three tokens, each with `limit` points per `window` seconds."""
    tokens = [arg for value in TOKENS.values() for arg in ("--token", value)]
    return bench_embedded.sandbox_process(repos, ["--core-limit", str(limit), "--reset-seconds", str(window),
                                                  *tokens])


def run(names: list[str], args: argparse.Namespace) -> tuple[float, SyncResult]:
    from ghetl import tenants
    from ghetl.pipeline.sync import sync
    from ghetl.queue.broker import MemoryBroker
    from ghetl.store import db, migrate

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
