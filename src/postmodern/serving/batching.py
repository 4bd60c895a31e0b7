"""Requests that arrive together are ranked together.

The sessions of every small request read in one turn of the event loop wait for the next turn and are
then ranked in one pass (per model and `exclude_seen`, with the largest k asked, cut back per request). An
idle server ranks each request alone, one turn later. A busy one, or one that the machine paused for a
moment, ranks its backlog in a few passes that cost far less per session than one pass each (one LSTM
pass over the batch, one product with the catalogue), so a queue drains faster than it would otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from fastapi.concurrency import run_in_threadpool

from postmodern.model.bundle import Recommendation, SessionRecommender


@dataclass
class _Pass:
    """Requests ranked in one pass: same model, same `exclude_seen`."""

    recommender: SessionRecommender
    exclude_seen: bool
    requests: list[tuple[list[list[str]], int, asyncio.Future]] = field(default_factory=list)

    def size(self) -> int:
        return sum(len(sessions) for sessions, _, _ in self.requests)

    def rank(self) -> list[Recommendation]:
        sessions = [session for sessions, _, _ in self.requests for session in sessions]
        return self.recommender.recommend(sessions, max(k for _, k, _ in self.requests), self.exclude_seen)

    def deliver(self, results: list[Recommendation]) -> None:
        start = 0
        for sessions, k, future in self.requests:
            mine = results[start : start + len(sessions)]
            start += len(sessions)
            if not future.done():  # a request whose client went away was cancelled
                future.set_result([replace(r, items=r.items[:k]) if len(r.items) > k else r for r in mine])

    def fail(self, error: BaseException) -> None:
        for _, _, future in self.requests:
            if not future.done():
                future.set_exception(error)


class BatchedRanking:
    def __init__(self, inline_max_sessions: int) -> None:
        """Passes of at most `inline_max_sessions` sessions run on the event loop (a thread hand-off would
        cost more than ranking them); larger ones in a worker thread, while the loop goes on reading. A
        request larger than that is ranked alone, in a thread."""
        self.inline_max_sessions = inline_max_sessions
        self._waiting: dict[tuple[int, bool], _Pass] = {}
        self._in_threads: set[asyncio.Task] = set()  # referenced until done, as asyncio asks

    async def rank(
        self, recommender: SessionRecommender, sessions: list[list[str]], k: int, exclude_seen: bool
    ) -> list[Recommendation]:
        if len(sessions) > self.inline_max_sessions:  # large enough to rank alone, and not hold up small ones
            return await run_in_threadpool(recommender.recommend, sessions, k, exclude_seen)
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._rank_waiting)  # runs after every request read in this turn has joined
        batch = self._waiting.setdefault((id(recommender), exclude_seen), _Pass(recommender, exclude_seen))
        future = loop.create_future()
        batch.requests.append((sessions, k, future))
        return await future

    def _rank_waiting(self) -> None:
        passes, self._waiting = list(self._waiting.values()), {}
        for batch in passes:
            if batch.size() > self.inline_max_sessions:
                task = asyncio.ensure_future(self._rank_in_thread(batch))
                self._in_threads.add(task)
                task.add_done_callback(self._in_threads.discard)
                continue
            try:
                results = batch.rank()
            except Exception as error:  # the requests answer 500, as they would ranked one by one
                batch.fail(error)
            else:
                batch.deliver(results)

    @staticmethod
    async def _rank_in_thread(batch: _Pass) -> None:
        try:
            results = await run_in_threadpool(batch.rank)
        except Exception as error:
            batch.fail(error)
        else:
            batch.deliver(results)
