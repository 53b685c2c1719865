"""The micro-batcher on its own: length grouping is optimal, results go to their own callers, failures
stay with their own items, a full queue refuses at once, close() drains."""

import asyncio
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bertforge.inference.batching import (BatcherMetrics, ForwardCost, MicroBatcher, QueueFull, ShuttingDown,
                                         split_by_length)


def brute_force(lengths, overhead):
    """Cheapest cost over every partition of the sorted lengths into contiguous groups."""
    s = sorted(lengths)
    best = math.inf
    for cuts in itertools.product([0, 1], repeat=len(s) - 1):
        groups, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                groups.append(s[start:i])
                start = i
        groups.append(s[start:])
        best = min(best, sum(overhead + len(g) * max(g) for g in groups))
    return best


@pytest.mark.parametrize("lengths", [[5], [3, 3, 3], [1, 2, 100, 101], [10, 400, 12, 390, 11, 9, 200], [7, 1, 50, 2, 49, 3, 8, 60]])
@pytest.mark.parametrize("overhead", [0, 20, 1000, 10**6])
def test_split_by_length_is_optimal_and_complete(lengths, overhead):
    groups = split_by_length(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    cost = sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)
    assert cost == brute_force(lengths, overhead)
    if overhead == 10**6:
        assert len(groups) == 1  # a costly forward: everything shares one
    if overhead == 0:
        assert all(len({lengths[i] for i in g}) == 1 for g in groups)  # free forwards: no padding at all


def test_forward_cost_recovers_the_fixed_cost_of_a_linear_cost_model():
    fit = ForwardCost(initial=256)
    for padded in [100, 4000, 800, 2500, 60, 3000, 1200, 500]:  # seconds = 20 ms + 15 us per character
        overhead = fit.observe(padded, 0.020 + 15e-6 * padded)
    assert overhead == pytest.approx(0.020 / 15e-6, rel=1e-6)
    # with measurement noise it stays near; later forwards outweigh old ones (the model changed: 10 ms fixed)
    rng = __import__("random").Random(0)
    for _ in range(200):
        padded = rng.uniform(50, 5000)
        fit.observe(padded, (0.010 + 15e-6 * padded) * rng.uniform(0.95, 1.05))
    assert fit.overhead == pytest.approx(0.010 / 15e-6, rel=0.15)


def test_forward_cost_keeps_its_guess_until_sizes_differ_or_when_the_fit_is_nonsense():
    fit = ForwardCost(initial=300)
    for _ in range(20):  # one client, one text size: no slope can be told from the intercept
        assert fit.observe(640, 0.05) == 300
    fit = ForwardCost(initial=300)
    for padded, seconds in [(100, 0.09), (2000, 0.05), (800, 0.07), (3000, 0.04)]:  # bigger was faster: noise
        assert fit.observe(padded, seconds) == 300
    fit = ForwardCost(initial=300, bounds=(16, 5000))
    for padded in [10, 20, 30, 40]:  # almost all intercept: clamped
        fit.observe(padded, 1.0 + 1e-9 * padded)
    assert fit.overhead == 5000


def test_batcher_fits_its_overhead_from_its_own_forwards_and_reports_it():
    registry = CollectorRegistry()

    def timed(items):  # 20 ms per forward plus 0.2 ms per unit of padded size
        time.sleep(0.02 + 0.0002 * len(items) * max(items))
        return items

    async def main():
        b = make(timed, max_batch=8, max_wait=0.01, cost=lambda x: x, overhead=1, metrics=BatcherMetrics(registry))
        for k in (1, 8, 2, 6, 3, 8):
            await asyncio.gather(*(b.submit([20]) for _ in range(k)))
        await b.close()
        return b.forward_cost.overhead

    overhead = run(main())
    assert 40 < overhead < 400  # true value 100 (0.02 / 0.0002); sleeps overshoot on a busy machine
    assert f'bertforge_forward_overhead{{task="default"}} {overhead}' in generate_latest(registry).decode()


def run(coro):
    return asyncio.run(coro)


def make(fn, **kw):
    executor = ThreadPoolExecutor(1)
    batcher = MicroBatcher(fn, executor=executor, **kw)
    batcher.start()
    return batcher


def test_each_caller_gets_its_own_results_in_order():
    calls = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.01)
        return [2 * x for x in items]

    async def main():
        b = make(double, max_batch=8, max_wait=0.02, cost=lambda x: x)
        requests = [list(range(i * 10, i * 10 + 1 + i % 3)) for i in range(12)]
        results = await asyncio.gather(*(b.submit(r) for r in requests))
        await b.close()
        return requests, results

    requests, results = run(main())
    for r, out in zip(requests, results):
        assert out == [2 * x for x in r]
    assert max(len(c) for c in calls) > 1  # requests were really batched together
    assert max(len(c) for c in calls) <= 8


def test_a_failing_item_fails_only_its_own_request():
    def fragile(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return [x + 1 for x in items]

    async def main():
        b = make(fragile, max_batch=16, max_wait=0.05)
        good = [b.submit([i]) for i in range(5)]
        bad = b.submit([3, -1])
        out = await asyncio.gather(*good, bad, return_exceptions=True)
        await b.close()
        return out

    out = run(main())
    assert out[:5] == [[1], [2], [3], [4], [5]]
    assert isinstance(out[5], ValueError)


def test_full_queue_refuses_at_once_and_counts():
    registry = CollectorRegistry()

    def slow(items):
        time.sleep(0.2)
        return items

    async def main():
        b = make(slow, max_batch=2, max_queue=4, max_wait=0, metrics=BatcherMetrics(registry), name="t")
        first = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0.05)  # the worker has taken [1, 2]; the queue is empty again
        fill = asyncio.ensure_future(b.submit([3, 4, 5, 6]))
        await asyncio.sleep(0)
        t = time.perf_counter()
        with pytest.raises(QueueFull) as info:
            await b.submit([7])
        refused_in = time.perf_counter() - t
        assert await first == [1, 2] and await fill == [3, 4, 5, 6]
        await b.close()
        with pytest.raises(ShuttingDown):
            await b.submit([8])
        return info.value, refused_in

    exc, refused_in = run(main())
    assert refused_in < 0.05 and exc.retry_after >= 1
    text = generate_latest(registry).decode()
    assert 'bertforge_rejected_items_total{task="t"} 1.0' in text
    assert 'bertforge_batch_size_count{task="t"}' in text


def test_close_finishes_queued_work():
    def slow(items):
        time.sleep(0.05)
        return items

    async def main():
        b = make(slow, max_batch=1, max_wait=0)
        pending = [asyncio.ensure_future(b.submit([i])) for i in range(4)]
        await asyncio.sleep(0)
        await b.close()
        return [p.result() for p in pending]

    assert run(main()) == [[0], [1], [2], [3]]


def test_cancelled_request_is_skipped():
    seen = []

    def record(items):
        seen.extend(items)
        time.sleep(0.05)
        return items

    async def main():
        b = make(record, max_batch=1, max_wait=0)
        first = asyncio.ensure_future(b.submit(["first"]))
        gone = asyncio.ensure_future(b.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client hung up while waiting in the queue
        assert await first == ["first"]
        assert await b.submit(["last"]) == ["last"]
        await b.close()

    run(main())
    assert seen == ["first", "last"]


def test_sequential_requests_do_not_wait_for_company_concurrent_ones_still_batch():
    """One client at a time: nobody can join a round, so a round starts at once instead of after max_wait.
    Once rounds hold several requests, the batcher waits for company again and batches a staggered burst."""
    calls = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def main():
        b = make(double, max_batch=16, max_wait=0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(8):  # a fresh batcher waits as configured until rounds have held one request a while
            assert await b.submit([i]) == [2 * i]
        assert loop.time() - start > 0.1
        start = loop.time()
        for i in range(5):
            assert await b.submit([i]) == [2 * i]
        sequential = loop.time() - start
        await asyncio.gather(*(b.submit([x]) for x in range(10, 16)))  # queued together: one round
        calls.clear()

        async def late(x, delay):
            await asyncio.sleep(delay)
            return await b.submit([x])

        staggered = await asyncio.gather(*(late(20 + k, 0.02 * k) for k in range(4)))  # 60 ms apart at most
        await b.close()
        return sequential, staggered

    sequential, staggered = run(main())
    assert sequential < 0.05  # five requests, none waited the 0.1 s max_wait
    assert staggered == [[40], [42], [44], [46]]
    assert len(calls) == 1  # the burst arriving over 60 ms shared one forward: the batcher waited for it
