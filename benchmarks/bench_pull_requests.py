"""Pull requests of a sandbox organisation, full then incremental, on the embedded default.

Prints, for the full sync, an incremental sync after a few changes and a sync where nothing
changed: wall seconds, GraphQL requests, points and nodes, pull requests per second, and the
peak RSS of the syncing process. The sandbox runs in its own process (optionally answering
with GitHub's latency), so neither its CPU nor its memory is counted.

    .venv/bin/python benchmarks/bench_pull_requests.py [--repos 2000] [--latency-ms 0] [--jitter-ms 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from typing import Any

from bench_embedded import sandbox_process


def _change_twenty(control: Any) -> None:
    """A comment on the first pull request of twenty repositories, through the control API."""
    changed = 0
    for repo in control.get("/repos", params={"owner": "bench"}).json():
        if changed == 20:
            return
        if control.get("/pull_request_counts", params={"repo": repo["full_name"]}).json()["pull_requests"]:
            control.post("/comment_pull_request", json={"repo": repo["full_name"], "number": 1,
                                                         "body": "benchmark change"}).raise_for_status()
            changed += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=0, help="the sandbox's delay per reply")
    parser.add_argument("--jitter-ms", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="consumer threads per stage")
    args = parser.parse_args()

    os.environ["GITHUB_TOKEN"] = "ghp_benchmarkToken0000000000000000000000"
    os.environ.pop("GHETL_EMBEDDER", None)
    extra = ["--latency-ms", str(args.latency_ms), "--jitter-ms", str(args.jitter_ms)] if args.latency_ms else []
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(args.repos, extra) as api_url:
        import httpx

        from ghetl import tenants
        from ghetl.pipeline.sync import sync
        from ghetl.queue.broker import MemoryBroker
        from ghetl.store import db, migrate

        engine = db.engine(f"sqlite:///{tmp}/bench.db")
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, "bench")
            tenants.add_integration(conn, "bench", "bench", api_url=api_url, settings={"pull_requests": True})
        runs = []
        for label in ("full", "after 20 changes", "nothing changed"):
            if label == "after 20 changes":
                _change_twenty(httpx.Client(base_url=f"{api_url}/_sandbox"))
            started = time.perf_counter()
            result = sync("bench", engine=engine, broker=MemoryBroker(), workers=args.workers, full=label == "full")
            runs.append((label, time.perf_counter() - started, result))

    print(f"pull requests, embedded default (SQLite + memory://), {args.repos} repositories, "
          f"sandbox latency {args.latency_ms} ms ± {args.jitter_ms} ms, {args.workers} consumer thread(s) per stage")
    print(f"  {'run':<18}{'overall':>10}{'seconds':>10}{'PRs':>9}{'PRs/s':>8}{'requests':>10}{'points':>8}"
          f"{'nodes':>10}")
    for label, wall, result in runs:
        stats = result.stats
        counts = result.counts["github_pull_requests"]
        print(f"  {label:<18}{result.overall:>10}{wall:>10.2f}{counts['embedded']:>9}"
              f"{counts['embedded'] / wall:>8.0f}{stats['graphql_requests']:>10}{stats['graphql_points']:>8}"
              f"{stats.get('graphql_nodes', 0):>10}")
    print(f"  peak RSS MB        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
