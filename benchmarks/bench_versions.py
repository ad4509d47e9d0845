"""This checkout against an earlier revision: the same benchmarks, run alternately, side by side.

Checks out `--before` (a commit, tag or branch) into a temporary git worktree and runs that
revision's own `bench_embedded.py` and `bench_scaleout.py` (each with its own code: PYTHONPATH
points at its tree) and this checkout's, alternating `--runs` times so that the shared
machine's drifts in speed hit both alike. Prints each run's wall seconds, the medians, and the
ratio now / before (below 1 is faster). Both sync repositories only: a revision from before
the pull-request step has none, and this one is told to skip it.

    .venv/bin/python benchmarks/bench_versions.py --before eb876b2 [--runs 3] [--repos 10000]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
WALL = re.compile(r"^\s*wall seconds\s+([\d.]+)", re.MULTILINE)


def wall_seconds(tree: Path, script: str, repos: int) -> float:
    """One run of `script` from `tree`'s benchmarks/ with `tree`'s ghetl; its printed wall seconds."""
    done = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / script), "--repos", str(repos)],
        cwd=tree, env={**_env(), "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=1800,
    )
    match = WALL.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"{script} of {tree} failed: {(done.stderr or done.stdout)[-1500:]}")
    return float(match.group(1))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GHETL_EMBEDDER"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the revision to compare with (commit, tag or branch)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repos", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)
        try:
            walls: dict[tuple[str, str], list[float]] = {}
            for n in range(args.runs):
                for script in ("bench_embedded.py", "bench_scaleout.py"):
                    for label, tree in (("before", before), ("now", HERE)):
                        seconds = wall_seconds(tree, script, args.repos)
                        walls.setdefault((script, label), []).append(seconds)
                        print(f"run {n + 1}: {script:<18} {label:<7} {seconds:.2f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(before)], check=False)
    print(f"{args.repos} repositories, {args.runs} alternating runs each, before = {args.before}")
    for script in ("bench_embedded.py", "bench_scaleout.py"):
        old, new = statistics.median(walls[script, "before"]), statistics.median(walls[script, "now"])
        print(f"  {script:<18} median before {old:.2f} s, now {new:.2f} s, now / before {new / old:.2f}")


if __name__ == "__main__":
    main()
