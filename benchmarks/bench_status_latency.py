"""Status latency across processes on RabbitMQ: from a worker process publishing a status event to
a WebSocket client of the status server receiving it.

A publisher process (standing in for `ghetl worker`: the same `RabbitBroker.publish_status`)
sends `--events` stage events at `--rate` a second, each stamped with the wall clock when it is
handed to the broker; the status server runs in this process on its own RabbitMQ subscription,
and a client reads its stream. State changes (the transform circle turning `finished`) go out
at once and are what the latency is measured on; interleaved progress events of the extraction
circle show the coalescing (GHETL_STATUS_PROGRESS_INTERVAL): how many of them reach the client.
Prints p50, p95, p99 and max of the latency in ms (target: p95 <= 50 ms), events sent and
received, and the progress events coalesced away.

    .venv/bin/python benchmarks/bench_status_latency.py [--events 2000] [--rate 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from websockets.sync.client import connect

from ghetl import tenants
from ghetl.queue.rabbitmq import RabbitBroker
from ghetl.status.server import StatusServer
from ghetl.store import db, migrate

AMQP_URL = os.environ.get("GHETL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

PUBLISHER = """
import sys, time
from ghetl.queue.rabbitmq import RabbitBroker
from ghetl.status.events import stage_event
url, prefix, tenant_id, events, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
broker = RabbitBroker(url, prefix)
broker.declare()
time.sleep(0.5)
for i in range(events):
    stage, status = ("transform", "finished") if i % 2 else ("extraction", "running")
    event = stage_event(tenant_id, 1, "bench-run", "github_repositories", stage, status, processed=i)
    event["sent_at"] = time.time()
    broker.publish_status([event])
    time.sleep(1 / rate)
broker.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events published (half of them state changes)")
    parser.add_argument("--rate", type=float, default=200.0, help="events a second")
    args = parser.parse_args()
    prefix = f"benchlat{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    received = {"finished": 0, "running": 0}
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.engine(f"sqlite:///{tmp}/bench.db")
        migrate.init(engine)
        with engine.begin() as conn:
            tenant_id, key = tenants.add_tenant(conn, "bench")
        broker = RabbitBroker(AMQP_URL, prefix)
        broker.declare()
        with StatusServer(engine, broker, port=0) as server:
            stop = threading.Event()

            def read() -> None:
                headers = {"Authorization": f"Bearer {key}"}
                with connect(f"{server.url}/?tenant=bench", additional_headers=headers) as ws:
                    while not stop.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        arrived = time.time()
                        if message.get("run_id") != "bench-run":
                            continue
                        received[message["status"]] = received.get(message["status"], 0) + 1
                        if message["status"] == "finished":
                            latencies.append((arrived - message["sent_at"]) * 1000)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            time.sleep(0.5)
            subprocess.run([sys.executable, "-c", PUBLISHER, AMQP_URL, prefix, str(tenant_id), str(args.events),
                            str(args.rate)], check=True, timeout=600)
            time.sleep(1.0)
            stop.set()
            reader.join(5)
        broker.close()
        db.dispose_engines()

    sent_changes = args.events // 2
    ordered = sorted(latencies)
    quantiles = statistics.quantiles(ordered, n=100)
    print(f"status latency, worker process -> RabbitMQ -> status server -> WebSocket client, "
          f"{args.events} events at {args.rate:g}/s")
    print(f"  state changes      {len(ordered)} of {sent_changes} received")
    print(f"  latency ms         p50 {quantiles[49]:.1f}, p95 {quantiles[94]:.1f}, p99 {quantiles[98]:.1f}, "
          f"max {ordered[-1]:.1f} (target p95 <= 50)")
    print(f"  progress events    {received['running']} of {args.events - sent_changes} sent reached the client "
          "(the rest coalesced)")


if __name__ == "__main__":
    main()
