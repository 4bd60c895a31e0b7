"""Requests are ranked in passes on one ranking thread, beside the event loop: what waits is ranked together.

The event loop reads requests and answers them; the ranking thread ranks. While it ranks one pass, the
requests that arrive wait, and the next pass takes all of them at once (per model and `exclude_seen`, with
the largest k asked, cut back per request). So an idle server ranks each request alone, at once, and a busy
one ranks larger passes that cost far less per session (one LSTM pass over the batch, one product with the
catalogue): the passes grow with the load, and the queue drains. The loop and the ranking run on two cores:
NumPy's products and element-wise loops let go of the interpreter lock while they work.

A server of several worker processes (`serving/workers.py`) has a core per worker already: there each pass is
ranked on the event loop's own thread (`on_event_loop`), and the requests that arrive meanwhile wait in the socket
and make the next pass. No hand-over between threads, no wait for the interpreter lock between the two: at 1,000
requests/s on two cores with two workers, p99 5.8 against 8.1 ms (the blend at 57,102 items), and 3.3 against 5.8
ms at 2,000/s (the LSTM at 4,701 items), medians of interleaved 15-s runs.

A request of more than `alone_min_sessions` sessions is ranked alone in another thread, so that it holds up
no small one. A small request with nothing to rank (its sessions' rankings cached, or no SKU known) is answered at
once, when the model keeps a cache.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch
from fastapi.concurrency import run_in_threadpool

from postmodern.model.bundle import Recommendation, SessionRecommender


@dataclass
class _Pass:
    """Requests ranked in one pass: same model, same `exclude_seen`."""

    recommender: SessionRecommender
    exclude_seen: bool
    requests: list[tuple[list[list[str]], int, asyncio.Future]] = field(default_factory=list)

    def rank(self) -> list[Recommendation] | BaseException:
        """The pass's recommendations, or the error that ranking it raised (its own requests fail, no other)."""
        sessions = [session for sessions, _, _ in self.requests for session in sessions]
        try:
            return self.recommender.recommend(sessions, max(k for _, k, _ in self.requests), self.exclude_seen)
        except Exception as error:
            return error

    def deliver(self, results: list[Recommendation] | BaseException) -> None:
        start = 0
        for sessions, k, future in self.requests:
            start += len(sessions)
            if future.done():  # a request whose client went away was cancelled
                continue
            if isinstance(results, BaseException):
                future.set_exception(results)
                continue
            mine = results[start - len(sessions) : start]
            future.set_result([replace(r, items=r.items[:k]) if len(r.items) > k else r for r in mine])


def _rank_on_this_thread_alone() -> None:
    """The ranking thread's products run on it alone: split over both cores, they wait on the core the event loop
    holds (p50 8.5 -> 5 ms, p99 28 -> 15 ms at 1,000/s, 57,102 items), and OpenMP's helper spins between them (twice
    the CPU per request at 4,540 items). Per thread: OpenMP keeps a thread count for each."""
    torch.set_num_threads(1)


def _rank_passes(passes: list[_Pass]) -> list[list[Recommendation] | BaseException]:
    return [batch.rank() for batch in passes]


class BatchedRanking:
    def __init__(self, alone_min_sessions: int = 64, on_event_loop: bool = False) -> None:
        self.alone_min_sessions = alone_min_sessions
        self.on_event_loop = on_event_loop
        if on_event_loop:
            _rank_on_this_thread_alone()  # created on the event loop's thread
        self._waiting: dict[tuple[int, bool], _Pass] = {}
        self._ranking = False  # a pass is on the ranking thread, or about to be
        self._thread: ThreadPoolExecutor | None = None

    async def rank(
        self, recommender: SessionRecommender, sessions: list[list[str]], k: int, exclude_seen: bool
    ) -> list[Recommendation]:
        if len(sessions) >= self.alone_min_sessions:
            return await run_in_threadpool(recommender.recommend, sessions, k, exclude_seen)
        answered = recommender.recommend_from_cache(sessions, k, exclude_seen)
        if answered is not None:  # nothing to rank: no wait for a pass
            return answered
        loop = asyncio.get_running_loop()
        if not self._ranking:
            self._ranking = True
            loop.call_soon(self._next_pass, loop)  # after every request read in this turn has joined
        batch = self._waiting.setdefault((id(recommender), exclude_seen), _Pass(recommender, exclude_seen))
        future = loop.create_future()
        batch.requests.append((sessions, k, future))
        return await future

    def close(self) -> None:
        """Let the ranking thread end once its pass is done."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    def _next_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        passes, self._waiting = list(self._waiting.values()), {}
        if not passes:
            self._ranking = False
            return
        if self.on_event_loop:
            for batch, results in zip(passes, _rank_passes(passes), strict=True):
                batch.deliver(results)
            self._ranking = False  # what arrives meanwhile is read after this, and starts the next pass
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, "ranking", initializer=_rank_on_this_thread_alone)
        ranked = loop.run_in_executor(self._thread, _rank_passes, passes)
        ranked.add_done_callback(lambda done: self._deliver(loop, passes, done))

    def _deliver(self, loop: asyncio.AbstractEventLoop, passes: list[_Pass], ranked: asyncio.Future) -> None:
        for batch, results in zip(passes, ranked.result(), strict=True):
            batch.deliver(results)
        self._next_pass(loop)  # what arrived meanwhile, in one pass
