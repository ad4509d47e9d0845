"""Chaos: many syncs of one organisation on PostgreSQL + RabbitMQ, each hit by a failure, then
one clean run after which the database must equal the sandbox exactly.

Between runs the sandbox changes at random (descriptions edited, repositories created, renamed
and deleted); during each run one thing goes wrong at a random moment: `kill -9` of the sync,
`kill -9` of a worker, a purge of the stage queues (`rabbitmqctl purge_queue`), a RabbitMQ
restart (`rabbitmqctl stop_app`/`start_app`), or nothing. Killed workers are started again
after the run, as a supervisor would. Then, with everything healthy: one incremental run, one
full run (deletions are only seen by a full listing), and a plain incremental run to compare
their wall times. Prints the runs, what hit them, their exit codes, and the difference between
the database and the sandbox after the clean runs (ids, names, descriptions, active flags),
which must be 0.

It restarts the RabbitMQ node it uses: run it when nothing else uses that node, or on a node of
its own (GHETL_BENCH_AMQP_URL for its address, GHETL_BENCH_RABBITMQ_NODE for `rabbitmqctl -n`).

    .venv/bin/python benchmarks/bench_chaos.py [--repos 10000] [--runs 20] [--workers 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

PG_ADMIN_URL = os.environ.get("GHETL_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("GHETL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RABBITMQ_NODE = os.environ.get("GHETL_BENCH_RABBITMQ_NODE")
TOKEN = "ghp_benchmarkToken0000000000000000000000"
OWNER = "chaos"
FAILURES = ("kill sync", "kill worker", "purge queues", "restart RabbitMQ", "none")


class Workers:
    """`ghetl worker all` processes, started again when one is gone."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env, self.count = env, count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (the workers' log, open as long as the pool)

    def ensure(self) -> int:
        """Start as many as are missing; return how many were started."""
        self.procs = [p for p in self.procs if p.poll() is None]
        missing = self.count - len(self.procs)
        for _ in range(missing):
            self.procs.append(subprocess.Popen([sys.executable, "-m", "ghetl", "worker", "all"], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=self.log))
        return missing

    def kill_one(self, rng: random.Random) -> None:
        alive = [p for p in self.procs if p.poll() is None]
        if alive:
            rng.choice(alive).kill()

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def rabbitmqctl(*args: str) -> None:
    node = ["-n", RABBITMQ_NODE] if RABBITMQ_NODE else []
    subprocess.run(["rabbitmqctl", *node, *args], check=True, capture_output=True, timeout=180)


def change_sandbox(sandbox: Any, rng: random.Random, run: int) -> collections.Counter[str]:
    """What happens on GitHub between two runs: mostly edits, some new, renamed and deleted repositories."""
    done: collections.Counter[str] = collections.Counter()
    repos = sandbox.repos(OWNER)
    for repo in rng.sample(repos, min(len(repos), rng.randint(1, 200))):
        sandbox.touch(repo["id"], description=f"edited before run {run}: {rng.random():.6f}")
        done["edited"] += 1
    for n in range(rng.randint(0, 5)):
        sandbox.create(OWNER, f"new-{run}-{n}", description=f"created before run {run}")
        done["created"] += 1
    for repo in rng.sample(repos, rng.randint(0, 3)):
        sandbox.rename(repo["id"], f"{repo['name']}-r{run}")
        done["renamed"] += 1
    for repo in rng.sample(sandbox.repos(OWNER), rng.randint(0, 3)):
        sandbox.delete(repo["id"])
        done["deleted"] += 1
    return done


def hit(failure: str, sync: subprocess.Popen[bytes], workers: Workers, queues: list[str], rng: random.Random) -> bool:
    """Let the run go on for a moment, then do `failure` to it (runs against the sandbox last
    about a second incremental, a few seconds full, so most failures land mid-run)."""
    time.sleep(rng.uniform(0.05, 1.5))
    if sync.poll() is not None:
        return False
    if failure == "kill sync":
        sync.kill()
    elif failure == "kill worker":
        workers.kill_one(rng)
    elif failure == "purge queues":
        for queue in queues:
            rabbitmqctl("purge_queue", queue)
    elif failure == "restart RabbitMQ":
        rabbitmqctl("stop_app")
        time.sleep(1)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    return True


def sync(env: dict[str, str], *flags: str, timeout: float = 900) -> tuple[int, float, dict[str, Any] | None]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ghetl", "sync", "--tenant", OWNER, "--json", *flags], env=env,
                          capture_output=True, timeout=timeout)
    wall = time.perf_counter() - started
    try:
        return proc.returncode, wall, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, wall, None


def difference(engine: sa.Engine, sandbox: Any, *, with_deletions: bool) -> list[str]:
    """Where the database and the sandbox disagree: one line per repository."""
    with engine.connect() as conn:
        stored = {r.external_id: r for r in conn.execute(sa.text(
            "SELECT external_id, full_name, description, active FROM repositories"))}
    truth = {str(r["id"]): r for r in sandbox.repos(OWNER)}
    wrong = []
    for external_id, repo in truth.items():
        row = stored.get(external_id)
        if row is None or (row.full_name, row.description, bool(row.active)) != (
                repo["full_name"], repo.get("description"), True):
            wrong.append(f"{external_id}: stored {tuple(row) if row else None}, GitHub has {repo['full_name']!r}")
    if with_deletions:
        wrong += [f"{external_id}: deleted on GitHub, still active" for external_id, row in stored.items()
                  if external_id not in truth and row.active]
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from ghetl import tenants
    from ghetl.queue.rabbitmq import RabbitBroker
    from ghetl.sandbox import Sandbox
    from ghetl.store import db, migrate
    from tests.support import delete_queues, scratch_database

    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    with scratch_database(PG_ADMIN_URL, "ghetl_chaos") as url, \
            Sandbox(orgs={OWNER: args.repos}, seed=args.seed) as sandbox:
        os.environ["GITHUB_TOKEN"] = TOKEN
        env = {**os.environ, "GHETL_DATABASE_URL": url, "GHETL_BROKER_URL": AMQP_URL,
               "GHETL_QUEUE_PREFIX": prefix, "GHETL_STALL_TIMEOUT": "30", "GHETL_NO_WORKER_TIMEOUT": "20"}
        engine = db.engine(url)
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, OWNER)
            tenants.add_integration(conn, OWNER, OWNER, api_url=sandbox.url, settings={"pull_requests": False})
        broker = RabbitBroker(AMQP_URL, prefix)
        broker.declare()
        queues = [broker.queue("transform"), broker.queue("embedding")]
        broker.close()
        workers = Workers(env, args.workers)
        workers.ensure()
        tally: collections.Counter[str] = collections.Counter()
        changes: collections.Counter[str] = collections.Counter()
        restarted = carried = 0
        try:
            print(f"chaos: {args.repos} repositories, {args.runs} runs, {args.workers} workers, seed {args.seed}")
            for run in range(1, args.runs + 1):
                changes += change_sandbox(sandbox, rng, run) if run > 1 else collections.Counter()
                failure = rng.choice(FAILURES)
                full = rng.random() < 0.3
                started = time.perf_counter()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ghetl", "sync", "--tenant", OWNER, "--quiet", "--timeout", "300",
                     *(["--full"] if full else [])],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                missed = not hit(failure, proc, workers, queues, rng)
                _, err = proc.communicate(timeout=900)
                tally[failure if not missed else "none (the run ended first)"] += 1
                text = err.decode(errors="replace")
                carried += sum(int(n) for n in re.findall(r"(\d+) \S.* items that earlier runs left unfinished", text))
                last = text.strip().splitlines()[-1:] or [""]
                print(f"  run {run:>2} {'full' if full else 'incr'} {failure if not missed else '-':<17} "
                      f"exit {proc.returncode:>3} "
                      f"in {time.perf_counter() - started:5.1f} s  {last[0][:110]}", flush=True)
                restarted += workers.ensure()

            workers.ensure()
            changes += change_sandbox(sandbox, rng, args.runs + 1)
            code, clean_wall, clean = sync(env)
            after_clean = difference(engine, sandbox, with_deletions=False)
            full_code, full_wall, _ = sync(env, "--full")
            after_full = difference(engine, sandbox, with_deletions=True)
            plain_code, plain_wall, plain = sync(env)
        finally:
            workers.stop()
            cleanup = RabbitBroker(AMQP_URL, prefix)
            delete_queues(cleanup)
            cleanup.close()
            engine.dispose()
            db.dispose_engines()

    print(f"failures: {', '.join(f'{k} {v}' for k, v in tally.items())}; workers started again: {restarted}; "
          f"items carried over from unfinished runs: {carried}")
    print(f"sandbox changes between runs: {', '.join(f'{k} {v}' for k, v in changes.items())}")
    extracted = clean["counts"]["github_repositories"]["extracted"] if clean else "?"
    print(f"clean incremental run: exit {code}, {clean_wall:.1f} s, {extracted} items (carried over or changed); "
          f"difference {len(after_clean)} (deletions not counted: a listing does not show them)")
    print(f"full run:              exit {full_code}, {full_wall:.1f} s; difference {len(after_full)} (with deletions)")
    plain_items = plain["counts"]["github_repositories"]["extracted"] if plain else "?"
    print(f"plain incremental run: exit {plain_code}, {plain_wall:.1f} s, {plain_items} items; "
          f"clean/plain wall ratio {clean_wall / plain_wall:.2f}")
    for line in (after_clean + after_full)[:10]:
        print(f"  {line}")
    if after_clean or after_full:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
