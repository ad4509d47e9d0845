"""Memory and time against the number of repositories: 10 000 and 100 000, on the embedded default
and on PostgreSQL + RabbitMQ, side by side in one run.

For each size and deployment: wall seconds of `ghetl sync --full` (process start to exit), and
per process (the sync, each worker) peak RSS and CPU seconds, also per 1 000 repositories. Then
the ratios that say whether a deployment scales: peak RSS at the large size over the small one
(target <= 1.5, and under 300 MB) and wall seconds per 1 000 repositories, large over small
(target <= 1.3). The sandbox runs in this process, its page cache warmed before each run, so its
work is not the sync's; the embedded sync runs as its own process, as the scale-out one does.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import bench_scaleout
from bench_scaleout import TOKEN, PeakRss, Usage, wait4, warm


class Figures(NamedTuple):
    wall: float
    processes: dict[str, Usage]


def embedded(repos: int) -> Figures:
    """`ghetl sync --full` on SQLite with the stages in its own threads."""
    from ghetl import tenants
    from ghetl.sandbox import Sandbox
    from ghetl.store import db, migrate

    with tempfile.TemporaryDirectory() as tmp, Sandbox(orgs={"bench": repos}, seed=3) as sandbox:
        warm(sandbox.url)
        url = f"sqlite:///{tmp}/bench.db"
        engine = db.engine(url)
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, "bench")
            tenants.add_integration(conn, "bench", "bench", api_url=sandbox.url, settings={"pull_requests": False})
        engine.dispose()
        env = {**os.environ, "GHETL_DATABASE_URL": url, "GHETL_BROKER_URL": "memory://", "GITHUB_TOKEN": TOKEN}
        env.pop("GHETL_EMBEDDER", None)
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ghetl", "sync", "--tenant", "bench", "--full", "--json"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peak = PeakRss(proc.pid)
        out = proc.stdout.read() if proc.stdout else b""
        err = proc.stderr.read() if proc.stderr else b""
        usage = wait4(proc, 3600, peak)
        wall = time.perf_counter() - started
        if usage.code != 0 or json.loads(out)["overall"] != "FINISHED":
            raise SystemExit(f"the embedded sync of {repos} failed: {err.decode()[-2000:]}")
        db.dispose_engines()
    return Figures(wall, {"sync": usage})


def scaleout(repos: int, workers: int) -> Figures:
    args = argparse.Namespace(repos=repos, workers=workers, concurrency=1, cold_sandbox=False, runs=1, profile=None)
    measured = bench_scaleout.run_once(args, None)
    if measured.result["overall"] != "FINISHED":
        raise SystemExit(f"the scale-out sync of {repos} failed: {measured.result.get('error')}")
    return Figures(measured.wall, measured.processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="repository counts, smallest first")
    parser.add_argument("--workers", type=int, default=2, help="`ghetl worker all` processes (scale-out)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

    results: dict[tuple[str, int], Figures] = {}
    for repos in sizes:
        results["embedded", repos] = embedded(repos)
        results["scale-out", repos] = scaleout(repos, args.workers)

    print(f"{'deployment':<10} {'repos':>7} {'wall s':>8} {'s/1000':>7}  process: peak RSS MB, CPU s (per 1000)")
    for (deployment, repos), figures in results.items():
        per = repos / 1000
        processes = ", ".join(f"{name} {u.rss_mb:.0f} MB {u.cpu_s:.1f} s ({u.cpu_s / per:.2f})"
                              for name, u in figures.processes.items())
        print(f"{deployment:<10} {repos:>7} {figures.wall:>8.2f} {figures.wall / per:>7.3f}  {processes}")
    small, large = sizes[0], sizes[-1]
    for deployment in ("embedded", "scale-out"):
        a, b = results[deployment, small], results[deployment, large]
        wall_ratio = (b.wall / large) / (a.wall / small)
        rss = ", ".join(f"{name} {b.processes[name].rss_mb / a.processes[name].rss_mb:.2f}"
                        for name in a.processes if name in b.processes)
        print(f"{deployment}: {large} vs {small}: wall per 1000 x{wall_ratio:.2f} (target <= 1.3); "
              f"peak RSS x: {rss} (target <= 1.5, each under 300 MB)")


if __name__ == "__main__":
    main()
