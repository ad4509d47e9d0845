"""Full sync of 10 000 repositories on PostgreSQL + RabbitMQ at GitHub's latency: one request at
a time against the default concurrency, then the default through a storm of failures.

The sandbox answers each request after 250 ± 100 ms (`--latency-ms`, `--jitter-ms`), as GitHub
does (0.3-1 s), while serving others meanwhile. Three runs, side by side so that this machine's
noise cancels in the ratios:

1. serial: GHETL_CONCURRENCY=1, every request waits for the one before;
2. default: the pacer's default concurrency;
3. storm: the default, with 18 listing pages answering 502 once and 10 answering a secondary
   limit (`retry-after: 1`) once, among the 101 requests (the same shares at other sizes).

Prints each run's figures (bench_scaleout's report), then: wall times, the most requests in
flight at once, the ratio default / serial (target <= 0.2), and the storm's wall time over the
clean wall time plus the waits GitHub mandated (10 x 1 s; target <= 1.25).

    .venv/bin/python benchmarks/bench_latency.py [--repos 10000] [--latency-ms 250] [--jitter-ms 100]
                                                  [--workers 2]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import bench_scaleout

STORM_502 = 0.18
STORM_SECONDARY = 0.10
RETRY_AFTER = 1


def storm(pages: int, seed: int = 5) -> tuple[Any, float]:
    """What injects the storm into a sandbox (18 % of the pages answer 502 once, 10 % a
    secondary limit once: 18 and 10 of 10 000 repositories' 101 requests), and the seconds of
    waiting GitHub mandates in it."""
    failing, limited = max(1, round(pages * STORM_502)), max(1, round(pages * STORM_SECONDARY))
    chosen = random.Random(seed).sample(range(2, pages + 1), failing + limited)

    def inject(sandbox: Any) -> None:
        for page in chosen[:failing]:
            sandbox.inject("status", path=f"&page={page}$", times=1, status=502)
        for page in chosen[failing:]:
            sandbox.inject("secondary", path=f"&page={page}$", times=1, retry_after=RETRY_AFTER)

    return inject, float(limited * RETRY_AFTER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=250.0)
    parser.add_argument("--jitter-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2, help="`ghetl worker all` processes")
    args = parser.parse_args()
    scaleout = argparse.Namespace(repos=args.repos, workers=args.workers, concurrency=1, cold_sandbox=False,
                                  runs=1, profile=None)
    latency = {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms}
    inject, mandated = storm(-(-args.repos // 100))

    runs = {
        "serial": bench_scaleout.run_once(scaleout, None, env_extra={"GHETL_CONCURRENCY": "1"}, **latency),
        "default": bench_scaleout.run_once(scaleout, None, **latency),
        "storm": bench_scaleout.run_once(scaleout, None, faults=inject, **latency),
    }
    for name, measured in runs.items():
        print(f"--- {name}")
        print("\n".join(measured.lines), flush=True)

    serial, default, stormy = runs["serial"], runs["default"], runs["storm"]
    print(f"\nat {args.latency_ms:g} ± {args.jitter_ms:g} ms a request, {args.repos} repositories:")
    for name, measured in runs.items():
        stats = measured.result["stats"]
        print(f"  {name:<8} {measured.wall:6.2f} s wall, {measured.result['requests']} requests, "
              f"at most {measured.max_in_flight} in flight, {stats.get('retries', 0)} retries, "
              f"{stats.get('secondary_limits', 0)} secondary limits, {measured.result['overall']}")
    print(f"  default / serial                     {default.wall / serial.wall:.2f} (target <= 0.2)")
    print(f"  storm / (default + {mandated:g} s mandated)    {stormy.wall / (default.wall + mandated):.2f} "
          "(target <= 1.25)")


if __name__ == "__main__":
    main()
