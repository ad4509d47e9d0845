"""The status stream under load: 1 000 WebSocket clients over 50 tenants while a 100 000-repository
sync runs on PostgreSQL + RabbitMQ with 2 workers.

`ghetl status-server` runs as its own process on the run's RabbitMQ subscription. One client
process opens `--clients` connections spread evenly over `--tenants` tenants (the first is the
tenant being synced; the others get synthetic runs published on the same RabbitMQ fanout at
`--other-rate` events a second, as other tenants' workers would), each presenting its tenant's
key in the `Authorization` header. Clients connect at `--connect-rate` a second, under the
server's per-address handshake limit, since they all come from this one address. The sync
starts once every client holds its snapshot.

Each client checks every event it receives: the event's `tenant_id` must be its own tenant's
(any other is counted as a leak), and its latency is its arrival time minus the `timestamp` the
worker (or sync) stamped when it made the event. State changes (a circle or job changing state)
go out at once; progress events are held back by design to at most one per
GHETL_STATUS_PROGRESS_INTERVAL per stage, so their latency includes that wait and is reported
apart. Prints p50/p95/p99/max of both, events received per client, the server's peak RSS and
CPU, and the sync's own figures (bench_scaleout). Targets: state-change p95 <= 50 ms at 1 000
clients, server RSS <= 300 MB, zero events of the wrong tenant.

    .venv/bin/python benchmarks/bench_status_load.py [--repos 100000] [--clients 1000] [--tenants 50]
                                                     [--workers 2] [--other-rate 50] [--connect-rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import bench_scaleout
import psutil
from bench_embedded import free_port, wait_for_port
from bench_scaleout import AMQP_URL, PeakRss, Usage, wait4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="`ghetl worker all` processes")
    parser.add_argument("--other-rate", type=float, default=50.0,
                        help="synthetic status events a second for the tenants not being synced, in all")
    parser.add_argument("--connect-rate", type=float, default=40.0, help="new connections a second")
    parser.add_argument("--clients-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_process:
        print(json.dumps(asyncio.run(_clients(json.loads(sys.stdin.readline())))), flush=True)
        return

    figures: dict[str, Any] = {}
    scaleout = argparse.Namespace(repos=args.repos, workers=args.workers, concurrency=1, cold_sandbox=False,
                                  profile=None)
    measured = bench_scaleout.run_once(scaleout, None, alongside=lambda url, env: _load(url, env, args, figures))
    print("\n".join(measured.lines))
    _report(args, figures)


@contextlib.contextmanager
def _load(url: str, env: dict[str, str], args: argparse.Namespace, figures: dict[str, Any]) -> Iterator[None]:
    """The status server, its clients and the other tenants' events, for as long as the sync runs."""
    from ghetl import tenants
    from ghetl.store import db

    engine = db.engine(url)
    with engine.begin() as conn:
        plan = [(tenants.get_tenant(conn, "bench")["id"], "bench", tenants.rotate_key(conn, "bench"))]
        for n in range(1, args.tenants):
            tenant_id, key = tenants.add_tenant(conn, f"other{n:02d}")
            plan.append((tenant_id, f"other{n:02d}", key))
    engine.dispose()

    port = free_port()
    server_log = tempfile.TemporaryFile()  # noqa: SIM115  (closed below)
    server = subprocess.Popen([sys.executable, "-m", "ghetl", "status-server", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=server_log)
    server_peak = PeakRss(server.pid)
    clients: subprocess.Popen[str] | None = None
    stop = threading.Event()
    publisher = threading.Thread(target=_publish_others, args=(env, plan[1:], args.other_rate, stop), daemon=True)
    try:
        wait_for_port(port, server, "ghetl status-server")
        clients = subprocess.Popen(
            [sys.executable, __file__, "--clients-process"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert clients.stdin is not None and clients.stdout is not None
        clients.stdin.write(json.dumps({"url": f"ws://127.0.0.1:{port}", "clients": args.clients,
                                        "connect_rate": args.connect_rate, "tenants": plan}) + "\n")
        clients.stdin.flush()
        started = time.perf_counter()
        ready = clients.stdout.readline().strip()
        if ready != "ready":
            raise SystemExit(f"the clients did not all connect: {ready or 'the client process ended'}")
        figures["connect_seconds"] = time.perf_counter() - started
        publisher.start()
        yield
        time.sleep(1.0)  # the job's last events and a held-back progress event reach the clients
    finally:
        stop.set()
        if publisher.is_alive():
            publisher.join(10)
        if clients is not None:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(clients.pid).cpu_times()
                figures["clients_cpu"] = times.user + times.system
            if clients.poll() is None:
                clients.send_signal(signal.SIGINT)
            out, _ = clients.communicate(timeout=120)
            figures["clients"] = json.loads(out.splitlines()[-1]) if out.strip() else {}
        server.send_signal(signal.SIGTERM)
        figures["server"] = wait4(server, 60, server_peak)
        server_log.seek(0)
        figures["server_log"] = server_log.read().decode(errors="replace")
        server_log.close()


def _publish_others(env: dict[str, str], others: list[tuple[int, str, str]], rate: float,
                    stop: threading.Event) -> None:
    """Runs of the other tenants as their workers would announce them: each run a new `run_id`
    whose extraction circle turns running, then finished (two state changes)."""
    from ghetl.queue.rabbitmq import RabbitBroker
    from ghetl.status.events import stage_event

    broker = RabbitBroker(AMQP_URL, env["GHETL_QUEUE_PREFIX"])
    n = 0
    try:
        while not stop.is_set():
            tenant_id = others[n % len(others)][0]
            run = f"other-{tenant_id}-{n // len(others)}"
            for status in ("running", "finished"):
                broker.publish_status([stage_event(tenant_id, 10_000_000 + tenant_id, run, "github_repositories",
                                                   "extraction", status, processed=n)])
            n += 1
            time.sleep(2 / rate)
    finally:
        broker.close()


async def _clients(plan: dict[str, Any]) -> dict[str, Any]:
    """Open every client, say `ready` once each holds its snapshot, read until SIGINT, then sum up."""
    from websockets.asyncio.client import connect

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    connected = 0
    all_connected = asyncio.Event()
    results: list[dict[str, Any]] = []
    sockets: list[Any] = []

    async def client(tenant_id: int, name: str, key: str) -> None:
        nonlocal connected
        seen: dict[tuple[Any, ...], str] = {}
        mine = {"tenant": name, "events": 0, "wrong_tenant": 0, "change_ms": [], "progress_ms": [],
                "snapshots": 0, "closed": None}
        results.append(mine)
        try:
            async with connect(f"{plan['url']}/?tenant={name}", additional_headers={"Authorization": f"Bearer {key}"},
                               max_queue=None) as ws:
                sockets.append(ws)
                async for text in ws:
                    arrived = time.time()
                    message = json.loads(text)
                    if message["type"] == "snapshot":
                        mine["snapshots"] += 1
                        if mine["snapshots"] == 1:
                            connected += 1
                            if connected == plan["clients"]:
                                all_connected.set()
                        continue
                    mine["events"] += 1
                    if message.get("tenant_id") != tenant_id:
                        mine["wrong_tenant"] += 1
                    latency = (arrived - dt.datetime.fromisoformat(message["timestamp"]).timestamp()) * 1000
                    where = (message.get("run_id"), message.get("step"), message.get("stage"))
                    state = message.get("status") or message.get("overall")
                    changed = seen.get(where) != state
                    seen[where] = state
                    mine["change_ms" if changed else "progress_ms"].append(round(latency, 2))
        except Exception as exc:  # a refused or dropped client is a figure, not a crash
            mine["closed"] = f"{type(exc).__name__}: {exc}"
            connected += mine["snapshots"] == 0
            if connected == plan["clients"]:
                all_connected.set()

    tasks = []
    for n in range(plan["clients"]):
        tenant_id, name, key = plan["tenants"][n % len(plan["tenants"])]
        tasks.append(asyncio.create_task(client(tenant_id, name, key)))
        await asyncio.sleep(1 / plan["connect_rate"])
    await all_connected.wait()
    print("ready", flush=True)
    await stop.wait()
    await asyncio.gather(*(ws.close() for ws in sockets))
    await asyncio.gather(*tasks)
    return {"clients": results}


def _percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{len(values)} sample(s)"
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.1f}, p95 {q[94]:.1f}, p99 {q[98]:.1f}, max {max(values):.1f} ({len(values)} events)"


def _report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    clients = figures.get("clients", {}).get("clients", [])
    server: Usage = figures["server"]
    synced = [c for c in clients if c["tenant"] == "bench"]
    others = [c for c in clients if c["tenant"] != "bench"]
    print(f"status stream, {len(clients)} clients over {args.tenants} tenants "
          f"({len(synced)} on the synced tenant), other tenants' events at {args.other_rate:g}/s")
    print(f"  connected          in {figures.get('connect_seconds', 0):.1f} s at {args.connect_rate:g}/s; "
          f"{sum(c['closed'] is not None for c in clients)} refused or dropped")
    for label, group in (("synced tenant", synced), ("other tenants", others)):
        changes = [ms for c in group for ms in c["change_ms"]]
        progress = [ms for c in group for ms in c["progress_ms"]]
        per_client = [c["events"] for c in group] or [0]
        print(f"  {label}")
        print(f"    state changes ms   {_percentiles(changes)}")
        print(f"    progress ms        {_percentiles(progress)} (held back by design up to the progress interval)")
        print(f"    events per client  min {min(per_client)}, median {statistics.median(per_client):g}, "
              f"max {max(per_client)}")
    every = [ms for c in clients for ms in c["change_ms"]]
    print(f"  all state changes  {_percentiles(every)} (target p95 <= 50)")
    print(f"  wrong tenant       {sum(c['wrong_tenant'] for c in clients)} events (target 0)")
    print(f"  status server      {server} (target RSS <= 300 MB)")
    print(f"  client process     {figures.get('clients_cpu', 0):.1f} s CPU ({len(clients)} clients, this machine)")
    errors = [line for line in figures.get("server_log", "").splitlines() if "ERROR" in line or "Traceback" in line]
    if errors:
        print(f"  server errors      {len(errors)}, first: {errors[0][:200]}")
    closed = [c["closed"] for c in clients if c["closed"]]
    if closed:
        print(f"  first refusal      {closed[0][:200]}")


if __name__ == "__main__":
    main()
