"""How fast the sandbox serves pull requests over GraphQL: one client reads every pull request of an
organization with its commits, reviews, comments and review threads (first page of each nested
connection), repository by repository, 50 pull requests a page.

Prints pull requests, requests, GraphQL points, seconds and pull requests per second, with the
graphql-core version (3.2 executes about twice as fast as 3.3 here).  The sandbox runs in this
process: serving is what is measured.

    .venv/bin/python benchmarks/bench_sandbox_graphql.py [--repos 500] [--seed 11]
"""

from __future__ import annotations

import argparse
import time

import graphql
import httpx

from ghetl.sandbox import Sandbox

QUERY = """
query($owner: String!, $name: String!, $after: String) {
  repository(owner: $owner, name: $name) {
    pullRequests(first: 50, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}) {
      pageInfo { hasNextPage endCursor }
      nodes {
        id databaseId number title body url state isDraft author { login } mergedBy { login }
        baseRefName headRefName mergeCommit { oid } additions deletions changedFiles reviewDecision
        createdAt updatedAt closedAt mergedAt
        commits(first: 100) { totalCount pageInfo { hasNextPage endCursor } nodes { commit {
          oid messageHeadline authoredDate committedDate additions deletions
          author { name email user { login } } committer { name } } } }
        reviews(first: 100) { totalCount pageInfo { hasNextPage endCursor }
          nodes { id state author { login } body submittedAt commit { oid } } }
        comments(first: 100) { totalCount pageInfo { hasNextPage endCursor }
          nodes { id author { login } body createdAt updatedAt } }
        reviewThreads(first: 50) { totalCount pageInfo { hasNextPage endCursor } nodes { id isResolved
          comments(first: 50) { nodes { id databaseId path line body author { login } createdAt updatedAt
            replyTo { id } pullRequestReview { id } } } } }
      }
    }
  }
  rateLimit { cost }
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=500)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with Sandbox(orgs={"bench": args.repos}, seed=args.seed, graphql_limit=10**9) as sb, \
            httpx.Client(headers={"Authorization": "bearer bench"}, timeout=120) as client:
        pulls = requests = points = 0
        started = time.perf_counter()
        for repo in sb.store.repos_of("bench"):
            after = None
            while True:
                answer = client.post(f"{sb.url}/graphql", json={"query": QUERY, "variables": {
                    "owner": "bench", "name": repo.name, "after": after}}).json()["data"]
                requests += 1
                points += answer["rateLimit"]["cost"]
                page = answer["repository"]["pullRequests"]
                pulls += len(page["nodes"])
                if not page["pageInfo"]["hasNextPage"]:
                    break
                after = page["pageInfo"]["endCursor"]
        seconds = time.perf_counter() - started
    print(f"graphql-core {graphql.__version__}: {pulls} pull requests of {args.repos} repositories in "
          f"{seconds:.1f} s ({pulls / seconds:.0f}/s), {requests} requests, {points} points")


if __name__ == "__main__":
    main()
