"""Independent requests sent side by side: at GitHub's 0.3-1 s a request, one after the other is
what makes a sync slow, not the work done with the answers.

The pacer (`pacer.Pacer`) decides how many are really in flight; `concurrently` only keeps
enough of them asked for, and no more, so that a listing of 100 000 repositories does not hold
1 000 pages in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def concurrently(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`fn` of each item, in the order the calls finish, with up to `workers` running at once.

    A failure stops new calls; those already running finish and their results are still given
    (what landed before a rate-limit stop is kept), then the first failure is raised.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    todo = iter(items)
    failure: BaseException | None = None
    pending: set[Future[R]] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ghetl-request") as pool:
        try:
            while True:
                if failure is None:
                    pending.update(pool.submit(fn, item) for item in itertools.islice(todo, 2 * workers - len(pending)))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    error = future.exception()
                    if error is None:
                        yield future.result()
                    elif failure is None:
                        failure = error
        finally:
            for future in pending:
                future.cancel()
    if failure is not None:
        raise failure

