"""Full sync of 10 000 sandbox repositories on the scale-out deployment (PostgreSQL + RabbitMQ).

Starts the GitHub sandbox in this process, a fresh PostgreSQL database, queues under a unique
prefix and `ghetl worker all` processes, then runs `ghetl sync --full` as its own process, as
an operator would. Prints wall seconds, repositories/s per stage (from the status events'
timestamps), messages published, the peak RSS of every process (VmHWM, sampled from /proc:
`ru_maxrss` of a child also counts the parent's memory it was forked from) and its CPU seconds
(from `os.wait4`, which reports each child's own). Cleans up after
itself. The sandbox's page cache is warmed before the run, since GitHub's work is not done on
this machine; `--cold-sandbox` leaves it cold. `--profile DIR` attaches py-spy (if installed)
to the sync and the workers and leaves collapsed stacks in DIR. `--runs N` repeats the whole
measurement on fresh databases and ends with the spread of the wall seconds, since this shared
machine's speed moves between runs.

    .venv/bin/python benchmarks/bench_scaleout.py [--repos 10000] [--workers 2] [--concurrency 1]
                                                  [--cold-sandbox] [--runs 1] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

PG_ADMIN_URL = os.environ.get("GHETL_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("GHETL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TOKEN = "ghp_benchmarkToken0000000000000000000000"


class Measured(NamedTuple):
    """One measured run: its wall seconds, its report, the sync's JSON, the most requests the
    sandbox had in flight at once, and each process's peak RSS and CPU."""

    wall: float
    lines: list[str]
    result: dict[str, Any]
    max_in_flight: int
    processes: dict[str, Usage]


class Usage(NamedTuple):
    code: int
    rss_mb: float
    cpu_s: float

    def __str__(self) -> str:
        return f"{self.rss_mb:.0f} MB peak RSS, {self.cpu_s:.1f} s CPU, exit {self.code}"


class PeakRss(threading.Thread):
    """Follows a process's peak resident memory (VmHWM) until it exits; in MB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.mb = pid, 0.0
        self.start()

    def run(self) -> None:
        while True:
            try:
                with open(f"/proc/{self.pid}/status") as status:
                    line = next((text for text in status if text.startswith("VmHWM:")), None)
            except OSError:
                return
            if line is None:  # a zombie: it has exited
                return
            self.mb = max(self.mb, int(line.split()[1]) / 1024)
            time.sleep(0.05)


def wait4(proc: subprocess.Popen[bytes], timeout: float, peak: PeakRss) -> Usage:
    """Reap a child; return its exit code, its own peak RSS and the CPU time it used."""
    deadline = time.monotonic() + timeout
    pid, status, usage = 0, 0, None
    while time.monotonic() < deadline and not pid:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        time.sleep(0 if pid else 0.05)
    if not pid:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(proc.returncode, peak.mb, usage.ru_utime + usage.ru_stime)


def server_cpu() -> dict[str, float]:
    """CPU seconds used so far by the PostgreSQL and RabbitMQ servers on this machine, from /proc.

    PostgreSQL's backends come and go; the postmaster reaps them, so their time is in its
    children's counters. Returns nothing for a server that is not local.
    """
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        server = {"postgres": "PostgreSQL", "beam.smp": "RabbitMQ"}.get(name)
        if server:
            used = sum(int(v) for v in fields[11:13])
            if server == "PostgreSQL" and fields[1] == "1":
                used += sum(int(v) for v in fields[13:15])
            found[server] = found.get(server, 0.0) + used / tick
    return found


def python_speed() -> float:
    """Seconds for a fixed pure-Python loop: how fast this (shared, often noisy) machine is right now.

    The same code has run twice as slowly at some moments of a session as at others, and the
    wall time of a run moves with it: compare runs only together with this figure.
    """
    started = time.perf_counter()
    total = 0
    for n in range(10_000_000):
        total += n
    return time.perf_counter() - started


def warm(url: str) -> None:
    """List the organisation once, in the order the sync lists it, so the sandbox serves its
    pages from its cache during the run (the sandbox caches each sort order apart).

    GitHub's servers do not run on this machine's two cores; a cold sandbox serialising ten
    thousand repositories would charge their work to the run (`--cold-sandbox` measures that).
    """
    from ghetl.github import GitHubClient

    with GitHubClient(url, TOKEN) as client:
        for _ in client.paginate(client.listing_url("bench", "Organization")):
            pass


def stage_rates(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """Per stage: items processed and seconds from its first event to its `finished` event."""
    first: dict[str, dt.datetime] = {}
    done: dict[str, tuple[int, dt.datetime]] = {}
    for event in events:
        if event.get("type") != "stage":
            continue
        at = dt.datetime.fromisoformat(event["timestamp"])
        first.setdefault(event["stage"], at)
        if event["status"] == "finished":
            done[event["stage"]] = (event.get("processed") or 0, at)
    return {stage: (n, (at - first[stage]).total_seconds()) for stage, (n, at) in done.items()}


def timeline(events: list[dict[str, Any]], started: dt.datetime) -> str:
    """When each stage started and finished, and when the job did, in seconds after the sync
    process was started: where the time before the first page and after the last one goes."""
    marks: dict[str, list[float]] = {}
    finished = None
    for event in events:
        at = (dt.datetime.fromisoformat(event["timestamp"]) - started).total_seconds()
        if event.get("type") == "stage":
            marks.setdefault(event["stage"], []).append(at)
        elif event.get("overall") == "FINISHED":
            finished = at
    spans = [f"{stage} +{min(ats):.2f}..+{max(ats):.2f}" for stage, ats in marks.items()]
    return ", ".join(spans + ([f"job FINISHED +{finished:.2f}"] if finished is not None else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="`ghetl worker all` processes")
    parser.add_argument("--concurrency", type=int, default=1, help="consumers per stage in each worker")
    parser.add_argument("--cold-sandbox", action="store_true",
                        help="do not warm the sandbox's page cache first (its CPU then counts in the run)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure this many runs, each on a fresh database, and sum up their wall seconds")
    parser.add_argument("--profile", metavar="DIR", help="run every process under py-spy, collapsed stacks into DIR")
    args = parser.parse_args()

    py_spy = shutil.which("py-spy", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if args.profile:
        if py_spy is None:
            parser.error("--profile needs py-spy: pip install py-spy")
        if args.runs != 1:
            parser.error("--profile measures one run: leave out --runs")
        os.makedirs(args.profile, exist_ok=True)

    walls = []
    for _ in range(args.runs):
        measured = run_once(args, py_spy)
        print("\n".join(measured.lines), flush=True)
        walls.append(measured.wall)
    if args.runs > 1:
        print(f"wall seconds of {args.runs} runs: min {min(walls):.2f}, median {statistics.median(walls):.2f}, "
              f"max {max(walls):.2f}; {sum(w <= 5 for w in walls)} of {args.runs} within 5 s")


def run_once(args: argparse.Namespace, py_spy: str | None, *, latency_ms: float = 0.0, jitter_ms: float = 0.0,
             env_extra: dict[str, str] | None = None,
             faults: Callable[[Any], None] | None = None,
             alongside: Callable[[str, dict[str, str]], contextlib.AbstractContextManager[Any]] | None = None,
             ) -> Measured:
    """One measured sync on a fresh database and fresh queues.

    `latency_ms`/`jitter_ms` slow the sandbox to GitHub's pace, `env_extra` goes to the sync and
    the workers (GHETL_CONCURRENCY), `faults` injects failures into the sandbox after warming.
    `alongside(database_url, env)` is entered once the workers consume and left when the sync
    has ended: what else runs during the sync (a status server and its clients).
    """
    profilers: list[subprocess.Popen[bytes]] = []

    def profile(name: str, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Attach py-spy (collapsed stacks into DIR/name.txt); it writes them on SIGINT or when the process ends."""
        if args.profile and py_spy:
            profilers.append(subprocess.Popen(
                [py_spy, "record", "--format", "raw", "--rate", "200", "--gil", "-o", f"{args.profile}/{name}.txt",
                 "--pid", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        return proc

    from ghetl import tenants
    from ghetl.queue.rabbitmq import RabbitBroker
    from ghetl.sandbox import Sandbox
    from ghetl.sandbox.sandbox import Latency
    from ghetl.store import db, migrate
    from tests.support import delete_queues, scratch_database

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    with scratch_database(PG_ADMIN_URL, "ghetl_bench") as url:
        os.environ["GITHUB_TOKEN"] = TOKEN  # the integration is added here, the sync runs with `env`
        env = {**os.environ, "GHETL_DATABASE_URL": url, "GHETL_BROKER_URL": AMQP_URL, "GHETL_QUEUE_PREFIX": prefix,
               **(env_extra or {})}
        env.pop("GHETL_EMBEDDER", None)
        broker = RabbitBroker(AMQP_URL, prefix)
        workers: list[subprocess.Popen[bytes]] = []
        logs: list[Any] = []
        events: list[dict[str, Any]] = []
        lock = threading.Lock()
        around = contextlib.ExitStack()
        try:
            with Sandbox(orgs={"bench": args.repos}, seed=3) as sandbox:
                if not args.cold_sandbox:
                    warm(sandbox.url)
                sandbox.latency = Latency(latency_ms / 1000, jitter_ms / 1000)
                if faults is not None:
                    faults(sandbox)
                sandbox.reset_stats()
                engine = db.engine(url)
                migrate.init(engine)
                with engine.begin() as conn:
                    tenants.add_tenant(conn, "bench")
                    tenants.add_integration(conn, "bench", "bench", api_url=sandbox.url,
                                            settings={"pull_requests": False})
                engine.dispose()
                broker.declare()

                def record(event: dict[str, Any]) -> None:
                    with lock:
                        events.append(event)

                unsubscribe = broker.subscribe_status(record)
                for _ in range(args.workers):
                    log = tempfile.TemporaryFile()  # noqa: SIM115  (read after the run, closed with `logs`)
                    logs.append(log)
                    workers.append(profile(f"worker{len(workers)}", subprocess.Popen(
                        [sys.executable, "-m", "ghetl", "worker", "all", "--concurrency", str(args.concurrency)],
                        env=env, stdout=subprocess.DEVNULL, stderr=log,
                    )))
                worker_peaks = [PeakRss(proc.pid) for proc in workers]
                expected = args.workers * args.concurrency
                deadline = time.monotonic() + 60
                while min(broker.consumer_count("transform"), broker.consumer_count("embedding")) < expected:
                    if time.monotonic() > deadline:
                        raise SystemExit("the workers did not start consuming within a minute")
                    time.sleep(0.1)

                if alongside is not None:
                    around.enter_context(alongside(url, env))
                speed_before = python_speed()
                servers_before = server_cpu()
                own_before = resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                started_at = dt.datetime.now(dt.UTC)
                sync = profile("sync", subprocess.Popen(
                    [sys.executable, "-m", "ghetl", "sync", "--tenant", "bench", "--full", "--json"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                ))
                sync_peak = PeakRss(sync.pid)
                out = sync.stdout.read() if sync.stdout else b""
                err = sync.stderr.read() if sync.stderr else b""
                sync_usage = wait4(sync, 600, sync_peak)
                wall = time.perf_counter() - started
                servers = {k: v - servers_before.get(k, 0.0) for k, v in server_cpu().items()}
                own_after = resource.getrusage(resource.RUSAGE_SELF)
                sandbox_cpu = sum(getattr(own_after, f) - getattr(own_before, f) for f in ("ru_utime", "ru_stime"))
                if sync_usage.code != 0:
                    raise SystemExit(f"ghetl sync exited {sync_usage.code}: {err.decode()[-2000:]}")
                result = json.loads(out)
                speed_after = python_speed()
                time.sleep(0.3)
                unsubscribe()
                around.close()

                for profiler in profilers:
                    profiler.send_signal(signal.SIGINT)
                    profiler.wait(30)
                for proc in workers:
                    proc.send_signal(signal.SIGTERM)
                worker_usage = [(proc.pid, wait4(proc, 60, peak))
                                for proc, peak in zip(workers, worker_peaks, strict=True)]
                published = sum(_published(log) for log in logs)
                with lock:
                    run_events = [e for e in events if e.get("run_id") == result["run_id"]]
                max_in_flight = sandbox.in_flight.most
        finally:
            around.close()
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            delete_queues(broker)
            broker.close()
            db.dispose_engines()

    counts = result["counts"]["github_repositories"]
    lines = []
    transform_messages = -(-counts["extracted"] // 100)
    lines.append(f"scale-out (PostgreSQL + RabbitMQ), {args.repos} repositories, {args.workers} worker process(es) "
                 f"x {args.concurrency} consumer(s) per stage")
    lines.append(f"  machine speed      {speed_before:.2f} s before, {speed_after:.2f} s after "
                 "(a 10M-step Python loop; lower is faster)")
    lines.append(f"  overall            {result['overall']}")
    lines.append(f"  wall seconds       {wall:.2f} (ghetl sync process, start to exit)")
    lines.append(f"  sync seconds       {result['seconds']:.2f} (inside sync(): claim, extract, wait for FINISHED)")
    lines.append(f"  repositories/s     {counts['embedded'] / wall:.0f} end to end")
    for stage, (n, seconds) in stage_rates(run_events).items():
        lines.append(f"    {stage:<16} {n / seconds if seconds else float('inf'):.0f}/s ({n} in {seconds:.2f} s)")
    lines.append(f"  timeline           {timeline(run_events, started_at)}, process exit +{wall:.2f}")
    lines.append(f"  stored/embedded    {counts['transformed']}/{counts['embedded']} (failed {counts['failed']})")
    lines.append(f"  messages published {transform_messages} transform (sync, one per listing page) + {published} "
                 "embedding (workers)")
    lines.append(f"  API requests       {result['requests']}")
    lines.append(f"  sync process       {sync_usage}")
    for pid, usage in worker_usage:
        lines.append(f"  worker {pid:<11} {usage}")
    own = resource.getrusage(resource.RUSAGE_SELF)
    lines.append(f"  this process       {own.ru_maxrss / 1024:.0f} MB peak RSS, "
                 f"{own.ru_utime + own.ru_stime:.1f} s CPU, "
                 f"{sandbox_cpu:.1f} s of it during the sync (the sandbox serving the pages, "
                 f"{'cold' if args.cold_sandbox else 'warmed before the run'})")
    for server, seconds in servers.items():
        lines.append(f"  {server:<18} {seconds:.1f} s CPU during the sync (all of the server's processes)")
    processes = {"sync": sync_usage, **{f"worker {n}": usage for n, (_, usage) in enumerate(worker_usage, 1)}}
    return Measured(wall, lines, result, max_in_flight, processes)


def _published(log: Any) -> int:
    """What a worker says it published, from its closing log line."""
    log.seek(0)
    match = re.search(rb"(\d+) published", log.read())
    return int(match.group(1)) if match else 0


if __name__ == "__main__":
    main()
