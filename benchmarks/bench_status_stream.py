"""What the live status stream costs a sync, and what a stalled client costs (nothing, it should).

Full syncs of `--repos` sandbox repositories on the embedded default, each in a fresh database:
1. without a status server;
2. with a status server and one client reading everything;
3. the same plus one stalled client (it never reads, and a flood of bulky events has already
   filled its socket, so its sender is blocked for the whole sync).
Prints wall seconds per case, events the reading client got, what the stalled client's queue
dropped, and how long `publish_status` takes per event while the stalled client is connected.

    .venv/bin/python benchmarks/bench_status_stream.py [--repos 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_embedded import sandbox_process
from websockets.sync.client import connect

from ghetl import tenants
from ghetl.pipeline.sync import sync
from ghetl.queue.broker import MemoryBroker
from ghetl.status.events import stage_event
from ghetl.status.server import StatusServer
from ghetl.store import db, migrate


def fresh(tmp: str, n: int, api_url: str) -> tuple[object, str]:
    engine = db.engine(f"sqlite:///{tmp}/bench-{n}.db")
    migrate.init(engine)
    with engine.begin() as conn:
        _, key = tenants.add_tenant(conn, "bench")
        tenants.add_integration(conn, "bench", "bench", api_url=api_url, settings={"pull_requests": False})
    return engine, key


def reader(url: str, key: str, counted: list[int], stop: threading.Event) -> None:
    with connect(f"{url}/?tenant=bench", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        while not stop.is_set():
            try:
                ws.recv(timeout=0.2)
                counted[0] += 1
            except TimeoutError:
                continue


def run(case: str, tmp: str, n: int, api_url: str) -> dict[str, float]:
    engine, key = fresh(tmp, n, api_url)
    broker = MemoryBroker()
    if case == "no server":
        started = time.perf_counter()
        result = sync("bench", engine=engine, broker=broker, full=True)
        return {"seconds": time.perf_counter() - started, "overall_ok": result.overall == "FINISHED"}
    with StatusServer(engine, broker, port=0, queue_size=1000) as server, contextlib.ExitStack() as stack:
        counted, stop = [0], threading.Event()
        thread = threading.Thread(target=reader, args=(server.url, key, counted, stop), daemon=True)
        thread.start()
        time.sleep(0.3)
        extra: dict[str, float] = {}
        if case == "stalled client":
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            stack.enter_context(connect(f"{server.url}/?tenant=bench", sock=sock, max_queue=1, ping_interval=None,
                                        close_timeout=0.5, additional_headers={"Authorization": f"Bearer {key}"}))
            flood = [{**stage_event(1, 1, "flood", "github_repositories", "transform", "running", processed=i),
                      "padding": secrets.token_hex(4000)} for i in range(3000)]
            started = time.perf_counter()
            for i in range(0, len(flood), 10):
                broker.publish_status(flood[i:i + 10])
            extra["publish µs/event"] = (time.perf_counter() - started) / len(flood) * 1e6
            time.sleep(1.0)
            counted[0] = 0
        started = time.perf_counter()
        result = sync("bench", engine=engine, broker=broker, full=True)
        seconds = time.perf_counter() - started
        time.sleep(0.3)
        stop.set()
        thread.join(5)
        if case == "stalled client":
            stalled_sub = max(server.subscriptions(), key=lambda s: s.dropped)
            extra["stalled dropped"] = stalled_sub.dropped
            extra["stalled resyncs"] = stalled_sub.resyncs
    return {"seconds": seconds, "events read": counted[0], "overall_ok": result.overall == "FINISHED", **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["GITHUB_TOKEN"] = "ghp_benchmarkToken0000000000000000000000"
    os.environ.pop("GHETL_EMBEDDER", None)
    cases = ("no server", "reading client", "stalled client")
    results: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(args.repos) as api_url:
        n = 0
        for _ in range(args.rounds):
            for case in cases:
                n += 1
                results[case].append(run(case, tmp, n, api_url))
    print(f"status stream cost, embedded default, full sync of {args.repos} repositories, "
          f"{args.rounds} rounds (median)")
    for case, rows in results.items():
        assert all(r["overall_ok"] for r in rows), f"a sync did not finish: {case}"
        keys = [k for k in rows[0] if k != "overall_ok"]
        figures = ", ".join(f"{k} {statistics.median(r[k] for r in rows):.1f}" for k in keys)
        print(f"  {case:<16} {figures}")
    print(json.dumps({c: [r["seconds"] for r in rows] for c, rows in results.items()}))


if __name__ == "__main__":
    main()
