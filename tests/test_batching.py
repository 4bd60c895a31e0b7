"""Requests that wait together are ranked in one pass on the ranking thread (or, in a worker process, on the event
loop's), and each gets what it would have got alone."""

import asyncio
import threading
from dataclasses import replace

import pytest
import torch
from serving_support import small_bundle

from postmodern.model.bundle import RankingCache, SessionRecommender
from postmodern.serving.batching import BatchedRanking

SKUS = [f"sku{i}" for i in range(1, 21)]


class CountingRecommender(SessionRecommender):
    """A real recommender that notes each pass: its sessions, k, and the thread that ran it."""

    def __init__(self, version: str, fail: bool = False, hold: threading.Event | None = None):
        super().__init__(small_bundle(version, SKUS, seed=len(version)))
        self.passes: list[tuple[list[list[str]], int, bool, str]] = []
        self.torch_threads: list[int] = []
        self.fail = fail
        self.hold = hold  # the first pass waits for it

    def recommend(self, sessions, k, exclude_seen=False):
        self.passes.append((sessions, k, exclude_seen, threading.current_thread().name))
        self.torch_threads.append(torch.get_num_threads())
        if self.hold is not None and len(self.passes) == 1:
            assert self.hold.wait(10)
        if self.fail:
            raise RuntimeError("broken model")
        return super().recommend(sessions, k, exclude_seen)


def alone(recommender: CountingRecommender, sessions, k, exclude_seen):
    return SessionRecommender.recommend(recommender, sessions, k, exclude_seen)


def assert_as_if_alone(answers, expected):
    """The same recommendations; a score may differ in its last bit, as BLAS's products of a batch and of one row
    may (a batch of four and a row alone do on AVX2-only CPUs)."""
    for got, wanted in zip(answers, expected, strict=True):
        for recommendation, alone_one in zip(got, wanted, strict=True):
            assert [sku for sku, _ in recommendation.items] == [sku for sku, _ in alone_one.items]
            assert [score for _, score in recommendation.items] == pytest.approx([s for _, s in alone_one.items])
            assert replace(recommendation, items=[]) == replace(alone_one, items=[])


def test_requests_read_together_are_ranked_in_one_pass_each_as_if_alone():
    recommender, threads = CountingRecommender("v1"), torch.get_num_threads()
    requests = [
        ([["sku1", "sku2"]], 3, False),
        ([["sku5"], ["nope"]], 10, False),
        ([["sku1", "sku2", "sku3"]], 5, True),
        ([["sku9", "sku1"]], 20, False),
        ([["sku2"]], 1, True),
    ]

    async def together():
        batching = BatchedRanking()
        return await asyncio.gather(*(batching.rank(recommender, *request) for request in requests))

    answers = asyncio.run(together())
    assert_as_if_alone(answers, [alone(recommender, *request) for request in requests])
    # one pass per exclude_seen, with the largest k asked, on the ranking thread
    assert sorted((len(sessions), k, exclude_seen) for sessions, k, exclude_seen, _ in recommender.passes) == [
        (2, 5, True),
        (4, 20, False),
    ]
    (thread,) = {thread for *_, thread in recommender.passes}
    assert thread.startswith("ranking")
    assert set(recommender.torch_threads) == {1} and torch.get_num_threads() == threads  # its own, not the caller's
    assert [len(answer[0].items) for answer in answers] == [3, 10, 5, 20, 1]


def test_requests_one_after_another_are_ranked_alone():
    recommender = CountingRecommender("v1")

    async def in_turn():
        batching = BatchedRanking()
        return [await batching.rank(recommender, [["sku3"]], k, False) for k in (2, 4)]

    first, second = asyncio.run(in_turn())
    assert [k for _, k, _, _ in recommender.passes] == [2, 4]
    assert second[0].items[:2] == first[0].items


def test_each_request_is_ranked_by_the_model_it_started_with():
    old, new = CountingRecommender("old"), CountingRecommender("new-model")

    async def across_a_swap():
        batching = BatchedRanking()
        return await asyncio.gather(batching.rank(old, [["sku1"]], 5, False), batching.rank(new, [["sku1"]], 5, False))

    from_old, from_new = asyncio.run(across_a_swap())
    assert len(old.passes) == len(new.passes) == 1
    assert from_old == alone(old, [["sku1"]], 5, False) and from_new == alone(new, [["sku1"]], 5, False)
    assert from_old != from_new  # different weights, different scores


def test_requests_that_arrive_while_a_pass_ranks_wait_and_are_ranked_in_the_next_pass_together():
    hold = threading.Event()
    recommender = CountingRecommender("v1", hold=hold)

    async def while_busy():
        batching = BatchedRanking()
        first = asyncio.ensure_future(batching.rank(recommender, [["sku1"]], 3, False))
        while not recommender.passes:  # the first pass is on the ranking thread, held there
            await asyncio.sleep(0.001)
        later = [
            asyncio.ensure_future(batching.rank(recommender, [[sku]], 3, False)) for sku in ("sku2", "sku3", "sku4")
        ]
        await asyncio.sleep(0.05)
        assert len(recommender.passes) == 1 and not any(request.done() for request in later)
        hold.set()
        answers = await asyncio.gather(first, *later)
        batching.close()
        return answers

    answers = asyncio.run(while_busy())
    assert [len(sessions) for sessions, *_ in recommender.passes] == [1, 3]
    assert_as_if_alone(answers, [alone(recommender, [[sku]], 3, False) for sku in ("sku1", "sku2", "sku3", "sku4")])


def test_in_a_worker_process_a_pass_is_ranked_on_the_event_loop_and_what_arrives_meanwhile_makes_the_next():
    """With several worker processes a pass is ranked on the event loop's own thread; the requests read while it ranks
    (here: made by the pass itself) wait, and are ranked together in the next pass, each as if alone."""
    recommender, threads = CountingRecommender("v1"), torch.get_num_threads()
    ranked_alone = recommender.recommend
    later = []

    async def busy():
        batching = BatchedRanking(on_event_loop=True)

        def rank_while_requests_arrive(sessions, k, exclude_seen=False):
            if not later:
                later.extend(
                    asyncio.ensure_future(batching.rank(recommender, [[sku]], 3, False)) for sku in ("sku2", "sku3")
                )
            return ranked_alone(sessions, k, exclude_seen)

        recommender.recommend = rank_while_requests_arrive
        first = await batching.rank(recommender, [["sku1"]], 3, False)
        return [first, *await asyncio.gather(*later)]

    try:
        answers = asyncio.run(busy())
        assert set(recommender.torch_threads) == {1}
    finally:
        torch.set_num_threads(threads)
    assert [len(sessions) for sessions, *_ in recommender.passes] == [1, 2]
    assert {thread for *_, thread in recommender.passes} == {threading.main_thread().name}
    assert_as_if_alone(answers, [alone(recommender, [[sku]], 3, False) for sku in ("sku1", "sku2", "sku3")])


def test_a_large_request_is_ranked_alone_in_a_thread_and_holds_up_no_small_one():
    recommender = CountingRecommender("v1")
    large = [[f"sku{i}"] for i in range(1, 5)]

    async def mixed():
        batching = BatchedRanking(alone_min_sessions=3)
        return await asyncio.gather(
            batching.rank(recommender, large, 2, False), batching.rank(recommender, [["sku7"]], 2, False)
        )

    answers = asyncio.run(mixed())
    passes = {len(sessions): thread for sessions, _, _, thread in recommender.passes}
    assert set(passes) == {4, 1}
    assert passes[1].startswith("ranking") and not passes[4].startswith("ranking")
    assert_as_if_alone(answers, [alone(recommender, large, 2, False), alone(recommender, [["sku7"]], 2, False)])


def test_a_failed_pass_fails_its_own_requests_only():
    broken, working = CountingRecommender("broken", fail=True), CountingRecommender("v1")

    async def mixed():
        batching = BatchedRanking()
        return await asyncio.gather(
            batching.rank(broken, [["sku1"]], 3, False),
            batching.rank(working, [["sku1"]], 3, False),
            batching.rank(broken, [["sku2"]], 3, False),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(mixed())
    assert isinstance(first, RuntimeError) and isinstance(third, RuntimeError)
    assert second == alone(working, [["sku1"]], 3, False)


def test_a_request_cancelled_while_it_waits_leaves_the_others_answered():
    recommender = CountingRecommender("v1")

    async def one_cancelled():
        batching = BatchedRanking()
        gone = asyncio.ensure_future(batching.rank(recommender, [["sku1"]], 3, False))
        kept = asyncio.ensure_future(batching.rank(recommender, [["sku2"]], 3, False))
        await asyncio.sleep(0)  # both have joined the pass
        gone.cancel()
        return await kept, gone.cancelled()

    kept, cancelled = asyncio.run(one_cancelled())
    assert cancelled and kept == alone(recommender, [["sku2"]], 3, False)


def test_a_request_with_nothing_to_rank_is_answered_without_waiting_for_a_pass():
    hold = threading.Event()
    recommender = CountingRecommender("v1", hold=hold)
    recommender.cache = RankingCache(100)
    SessionRecommender.recommend(recommender, [["sku3"]], 5)  # ranked recently (not a pass of this server)

    async def scenario():
        batching = BatchedRanking()
        held = asyncio.ensure_future(batching.rank(recommender, [["sku1"]], 5, False))  # its pass waits
        await asyncio.sleep(0.05)
        answers = await asyncio.wait_for(
            asyncio.gather(
                batching.rank(recommender, [["sku3"]], 5, False),  # cached
                batching.rank(recommender, [["nope"]], 5, False),  # no known SKU: popularity
            ),
            timeout=5,
        )
        assert not held.done()
        hold.set()
        await held
        return answers

    cached, unknown = asyncio.run(scenario())
    assert cached[0].cached and cached[0].items == SessionRecommender.recommend(recommender, [["sku3"]], 5)[0].items
    assert unknown[0].fallback
    assert [sessions for sessions, *_ in recommender.passes] == [[["sku1"]]]
