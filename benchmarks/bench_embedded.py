"""Full sync of 10 000 sandbox repositories on the embedded default (SQLite + in-process broker).

Prints wall seconds, repositories per second, API requests and the peak RSS of the syncing
process. The sandbox runs in its own process so that neither its CPU nor its memory is counted.

    .venv/bin/python benchmarks/bench_embedded.py [--repos 10000] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    """Return once `proc` listens on `port`; stop the benchmark if it exits or takes over a minute."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not listen within a minute")


@contextlib.contextmanager
def sandbox_process(repos: int, extra: list[str] | None = None) -> Iterator[str]:
    """The sandbox in a process of its own; `extra` are more `ghetl sandbox` options (latency)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ghetl.sandbox", "--port", str(port), "--orgs", f"bench:{repos}", *(extra or [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "the sandbox")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="consumer threads per stage")
    args = parser.parse_args()

    os.environ["GITHUB_TOKEN"] = "ghp_benchmarkToken0000000000000000000000"
    os.environ.pop("GHETL_EMBEDDER", None)
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(args.repos) as api_url:
        from ghetl import tenants
        from ghetl.pipeline.sync import sync
        from ghetl.queue.broker import MemoryBroker
        from ghetl.store import db, migrate

        engine = db.engine(f"sqlite:///{tmp}/bench.db")
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, "bench")
            tenants.add_integration(conn, "bench", "bench", api_url=api_url, settings={"pull_requests": False})
        started = time.perf_counter()
        result = sync("bench", engine=engine, broker=MemoryBroker(), workers=args.workers, full=True)
        wall = time.perf_counter() - started
        second = sync("bench", engine=engine, broker=MemoryBroker())

    counts = result.counts["github_repositories"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"embedded default (SQLite + memory://), {args.repos} repositories, "
          f"{args.workers} consumer thread(s) per stage")
    print(f"  overall            {result.overall}")
    print(f"  wall seconds       {wall:.2f}")
    print(f"  repositories/s     {counts['embedded'] / wall:.0f}")
    print(f"  stored/embedded    {counts['transformed']}/{counts['embedded']} (failed {counts['failed']})")
    print(f"  API requests       {result.requests} ({result.rate_limit_points} rate-limit points)")
    print(f"  peak RSS           {peak_mb:.0f} MB (sync process)")
    print(f"  incremental re-run {second.seconds:.2f} s, {second.requests} request(s), "
          f"{second.counts['github_repositories']['extracted']} repositories")


if __name__ == "__main__":
    main()
