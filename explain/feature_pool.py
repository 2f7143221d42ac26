"""Several features in flight at once against a served model, records still written in feature order.

Why: one feature sends only a handful of requests (best-of-k explanations,
then one simulation prompt per scored fragment, a few detection / fuzzing /
intruder prompts), and most of them wait on the one before (the explanation
must exist before it is scored). With one feature at a time, `--concurrency
64` would leave most of the 64 slots idle. Here up to `workers` features run
at once on threads; the backend's semaphore (`OpenAIBackend.call`) still
bounds the HTTP requests in flight to `--concurrency`, however many threads
ask.

Same records as one at a time: every request of a feature is decided by the
feature alone (its exemplars, the seed, the feature id), never by which
features ran before it, so the answers (and the cache keys) are the same;
records are yielded strictly in submission order, so explanations.jsonl has
the same lines in the same order, and a kill loses at most the features in
flight (their answers are in the call cache, so resuming them costs no
request). Memory is bounded: at most `2 * workers` features are submitted
and not yet yielded.

Only components known to be safe on threads run this way (`parallel_safe`):
LLM backends that are remote (`OpenAIBackend`) or replay a cache
(`--rescore`), and the LLM-free tokens explainer / scorer. A local model or
the embedding scorer keeps the one-feature-at-a-time loop of before.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_safe(backends: Iterable[Any], injected: bool) -> bool:
    """Whether features may run on threads: some backend is open, each says it is thread-safe, nothing injected.

    A run without any backend (tokens explainer and scorer) sends no request,
    so threads would gain nothing there and it keeps the plain loop.
    `injected`: the caller passed its own explainer / scorer objects, about
    which nothing is known, so they get the sequential loop.
    """
    backends = list(backends)
    return not injected and bool(backends) and all(getattr(b, "thread_safe", False) for b in backends)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`fn(item)` for every item, up to `workers` at a time, yielded in the items' order.

    The first exception (in item order) is raised when its item's turn to be
    yielded comes, after every earlier result was yielded; items not yet
    started are then cancelled. `workers <= 1` runs in the calling thread,
    exactly as a plain loop.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="feature")
    pending: deque[Future[R]] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
