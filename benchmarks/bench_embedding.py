"""Embedding throughput of the pipeline against bare `model.encode`, and search time by table size.

1. A full sync of `--repos` sandbox repositories on the embedded default with the MiniLM
   embedder (the sandbox runs in its own process), its embedding stage consuming only after
   transform has finished: texts / seconds from the stage's start to the job's end (reading
   rows, hashing, encoding, validating, storing, status, completion). The same texts are then
   encoded by the bare model in one `encode` call with the same settings, before and after,
   and the ratio printed. For reference, a normal sync's embedding deliveries are timed too,
   where extraction and transform compete for the same two cores.
2. Search time on SQLite (and PostgreSQL when reachable) at 10,000 and 100,000 stored vectors
   of one tenant: the whole `ghetl.search` call, and the numpy part alone.

    .venv/bin/python benchmarks/bench_embedding.py [--repos 2000] [--sizes 10000 100000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support
from bench_embedded import sandbox_process

from ghetl import embeddings, tenants
from ghetl.pipeline.sync import SyncResult, sync
from ghetl.pipeline.workers import Pipeline
from ghetl.queue.broker import MemoryBroker
from ghetl.store import db, migrate
from ghetl.workbench.search import search
from tests.support import scratch_database, wait_until

PG_ADMIN_URL = os.environ.get("GHETL_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


class Recording:
    """The real embedder, keeping the texts it encoded and the seconds it spent encoding them."""

    def __init__(self, inner: embeddings.SentenceEmbedder) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimension = inner.dimension
        self.texts: list[str] = []
        self.seconds = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.inner.embed(texts)
        self.seconds += time.perf_counter() - started
        self.texts.extend(texts)
        return vectors


def timed_embedding_stage() -> list[float]:
    """Wrap Pipeline.deliver so that every embedding delivery's duration is appended to the list."""
    durations: list[float] = []
    deliver = Pipeline.deliver

    def timed(self: Pipeline, stage: str, body: bytes, attempt: int) -> Any:
        started = time.perf_counter()
        try:
            return deliver(self, stage, body, attempt)
        finally:
            if stage == "embedding":
                durations.append(time.perf_counter() - started)

    Pipeline.deliver = timed  # type: ignore[method-assign]
    return durations


def bare_encode(model: embeddings.SentenceEmbedder, texts: list[str]) -> float:
    started = time.perf_counter()
    model.encoder.encode(texts, batch_size=model.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - started


def fresh_tenant(tmp: str, name: str, api_url: str) -> sa.Engine:
    engine = db.engine(f"sqlite:///{tmp}/{name}.db")
    migrate.init(engine)
    with engine.begin() as conn:
        tenants.add_tenant(conn, "bench")
        tenants.add_integration(conn, "bench", "bench", api_url=api_url, settings={"pull_requests": False})
    return engine


def transform_finished(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        job = conn.execute(sa.select(db.etl_jobs.c.status)).scalar_one()
    return job["steps"]["github_repositories"]["transform"] == "finished"


def staged_sync(engine: sa.Engine) -> tuple[SyncResult, float]:
    """A full sync whose embedding stage starts only once transform has finished.

    The stages are the real ones with the real messages; only their consumers run one after
    the other, so the embedding stage shares the cores with nothing else of the pipeline.
    Returns the result and the seconds from the embedding stage's start to the job's end.
    """
    broker = MemoryBroker()
    pipeline = Pipeline(engine, broker)
    results: list[SyncResult] = []
    runner = threading.Thread(target=lambda: results.append(
        sync("bench", engine=engine, broker=broker, full=True, run_workers=False)))
    runner.start()
    stop_transform, stop_embedding = threading.Event(), threading.Event()
    consumers = [threading.Thread(target=broker.consume, args=([stage], pipeline.deliver),
                                  kwargs={"concurrency": 1, "stop": stop}, daemon=True)
                 for stage, stop in (("transform", stop_transform), ("embedding", stop_embedding))]
    consumers[0].start()
    wait_until(lambda: transform_finished(engine), timeout=600)
    stop_transform.set()
    started = time.perf_counter()
    consumers[1].start()
    runner.join()
    seconds = time.perf_counter() - started
    stop_embedding.set()
    return results[0], seconds


def throughput(repos: int) -> None:
    model = embeddings.get_embedder("minilm")
    assert isinstance(model, embeddings.SentenceEmbedder)
    model.embed(["warm up the model so neither side pays for its first call"])
    recording = Recording(model)
    embeddings.get_embedder = lambda name=None: recording  # the pipeline builds its embedder through this
    durations = timed_embedding_stage()
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(repos) as api_url:
        result, alone = staged_sync(fresh_tenant(tmp, "staged", api_url))
        texts, encode_alone = list(recording.texts), recording.seconds
        recording.texts.clear()
        again = sync("bench", engine=db.engine(f"sqlite:///{tmp}/staged.db"), broker=MemoryBroker(),
                     full=True)
        unchanged = len(recording.texts)
        durations.clear()
        started = time.perf_counter()
        live = sync("bench", engine=fresh_tenant(tmp, "live", api_url), broker=MemoryBroker(), full=True)
        live_wall, live_busy = time.perf_counter() - started, sum(durations)
    before = bare_encode(model, texts)
    after = bare_encode(model, texts)
    bare_rate = len(texts) / statistics.mean([before, after])
    alone_rate = len(texts) / alone
    live_rate = live.counts["github_repositories"]["embedded"] / live_busy
    print(f"embedding throughput, {repos} sandbox repositories, model {model.model}, "
          f"batch_size {model.batch_size}, torch threads {os.environ.get('GHETL_EMBEDDER_THREADS', '1')}")
    print(f"  bare model.encode              {len(texts)} texts in {before:.2f} s / {after:.2f} s (before / after) "
          f"-> {bare_rate:.0f} texts/s")
    print(f"  embedding stage, alone         {result.overall}, {len(texts)} texts in {alone:.2f} s "
          f"({encode_alone:.2f} s of it in encode) -> {alone_rate:.0f} texts/s = {alone_rate / bare_rate:.1%} of bare")
    print(f"  embedding stage, in live sync  {live.overall}, {live_busy:.2f} s busy of {live_wall:.2f} s wall "
          f"(extraction and transform share the cores) -> {live_rate:.0f} texts/s = "
          f"{live_rate / bare_rate:.1%} of bare")
    print(f"  re-sync (full, unchanged)      {again.overall}, {unchanged} texts encoded")


def fill(engine: sa.Engine, size: int, dimension: int, model: str) -> str:
    """A tenant with `size` repositories and one random unit vector of `model` each."""
    with engine.begin() as conn:
        tenants.add_tenant(conn, "search-bench")
        integration = tenants.add_integration(conn, "search-bench", "bench", api_url="http://127.0.0.1:1",
                                              settings={"pull_requests": False})
        tenant_id = tenants.get_tenant(conn, "search-bench")["id"]
    rng = np.random.default_rng(7)
    for start in range(0, size, 10_000):
        ids = range(start, min(size, start + 10_000))
        vectors = rng.standard_normal((len(ids), dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scope = {"tenant_id": tenant_id, "integration_id": integration}
        with engine.begin() as conn:
            conn.execute(db.repositories.insert(), [
                {**scope, "external_id": str(i), "name": f"repo-{i}", "full_name": f"bench/repo-{i}",
                 "description": f"generated repository number {i}", "topics": [], "content_hash": "x"}
                for i in ids
            ])
            conn.execute(db.embeddings.insert(), [
                {**scope, "table_name": "repositories", "external_id": str(i), "model": model,
                 "dimension": dimension, "vector": embeddings.to_bytes(v), "content_hash": "x"}
                for i, v in zip(ids, vectors, strict=True)
            ])
    return "search-bench"


def search_times(engine: sa.Engine, label: str, size: int) -> None:
    embedder = embeddings.HashingEmbedder()  # instant, so the figures are the search's own cost
    tenant = fill(engine, size, embedder.dimension, embedder.model)
    search(tenant, "warm up", engine=engine, embedder=embedder)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        search(tenant, "card payment settlement", limit=10, engine=engine, embedder=embedder)
        runs.append(time.perf_counter() - started)
    matrix = np.random.default_rng(1).standard_normal((size, embedder.dimension)).astype(np.float32)
    query = embedder.embed(["card payment settlement"])[0]
    started = time.perf_counter()
    for _ in range(5):
        np.argsort(-(matrix @ query), kind="stable")[:10]
    numpy_ms = (time.perf_counter() - started) / 5 * 1000
    print(f"  {label:<10} {size:>7} vectors   search() median {statistics.median(runs) * 1000:7.1f} ms   "
          f"numpy part {numpy_ms:5.1f} ms")


def search_benchmark(sizes: list[int], postgres: bool) -> None:
    print("search time (one tenant, 384 dimensions, hashing embedder so encoding costs nothing)")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            engine = db.engine(f"sqlite:///{tmp}/search.db")
            migrate.init(engine)
            search_times(engine, "SQLite", size)
            engine.dispose()
        if postgres:
            postgres_times(size)


def postgres_times(size: int) -> None:
    with contextlib.ExitStack() as cleanup:
        try:
            url = cleanup.enter_context(scratch_database(PG_ADMIN_URL, "ghetl_bench"))
        except sa.exc.OperationalError as exc:
            print(f"  PostgreSQL unreachable, skipped: {str(exc.orig).strip().splitlines()[0]}")
            return
        engine = db.engine(url)
        try:
            migrate.init(engine)
            search_times(engine, "PostgreSQL", size)
        finally:
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--no-postgres", action="store_true", help="only SQLite for the search timings")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    os.environ["GITHUB_TOKEN"] = "ghp_benchmarkToken0000000000000000000000"
    if not args.skip_throughput:
        throughput(args.repos)
    search_benchmark(args.sizes, postgres=not args.no_postgres)


if __name__ == "__main__":
    main()
