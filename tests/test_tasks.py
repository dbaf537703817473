"""The task queue and its byte budget on trio's MockClock: virtual seconds, exact figures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from agent.link.budget import ByteBudget
from agent.link.tasks import QueueClosed, TaskQueue

Log = list[tuple[str, str, float]]


def recorder(log: Log, name: str, seconds: float) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        log.append(("start", name, trio.current_time()))
        await trio.sleep(seconds)
        log.append(("end", name, trio.current_time()))

    return job


def peak(log: Log) -> int:
    running = top = 0
    for kind, _, _ in sorted(log, key=lambda r: (r[2], r[0] == "start")):
        running += 1 if kind == "start" else -1
        top = max(top, running)
    return top


async def test_workers_bound_what_runs_at_once(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    log: Log = []
    async with TaskQueue.open(workers=2) as queue:
        started = trio.current_time()
        for i in range(6):
            queue.submit(recorder(log, f"j{i}", 1.0))
        assert queue.in_flight == 6
        await queue.wait_idle()
        assert trio.current_time() - started == 3.0  # six 1 s jobs, two at a time
    assert peak(log) == 2


async def test_in_sequence_jobs_run_one_after_another_in_arrival_order(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    log: Log = []
    async with TaskQueue.open(workers=5) as queue:
        for i in range(4):
            queue.submit(recorder(log, f"s{i}", 0.5), in_sequence=True)
        queue.submit(recorder(log, "free", 0.5))
        await queue.wait_idle()
    starts = [name for kind, name, _ in log if kind == "start" and name.startswith("s")]
    assert starts == ["s0", "s1", "s2", "s3"]
    sequenced = [entry for entry in log if entry[1].startswith("s")]
    assert peak(sequenced) == 1
    assert peak(log) == 2  # the free job ran beside the lane


async def test_set_workers_applies_to_what_waits(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    log: Log = []
    async with TaskQueue.open(workers=1) as queue:
        queue.set_workers(3)
        for i in range(3):
            queue.submit(recorder(log, f"j{i}", 1.0))
        started = trio.current_time()
        await queue.wait_idle()
        assert trio.current_time() - started == 1.0
    assert peak(log) == 3


async def test_a_closed_queue_refuses_new_jobs_and_finishes_the_accepted_ones(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    log: Log = []
    async with TaskQueue.open(workers=1) as queue:
        queue.submit(recorder(log, "accepted", 1.0))
        queue.close()
        with pytest.raises(QueueClosed):
            queue.submit(recorder(log, "late", 1.0))
        await queue.wait_idle()
    assert [name for kind, name, _ in log if kind == "end"] == ["accepted"]


async def test_the_budget_is_held_while_a_job_runs_and_released_after(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    async with TaskQueue.open(workers=1, max_bytes=1000) as queue:
        release = trio.Event()

        async def hold() -> None:
            await release.wait()

        queue.submit(hold, size=600)
        queue.submit(hold, size=600)
        assert queue.budget.used == 1200 and queue.budget.spent
        release.set()
        await queue.wait_idle()
        assert queue.budget.used == 0 and not queue.budget.spent
        assert queue.budget.peak == 1200


async def test_wait_for_room_returns_once_enough_is_released(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0  # time moves as soon as every task waits
    budget = ByteBudget(100)
    budget.charge(150)
    waited: list[float] = []

    async def reader() -> None:
        await budget.wait_for_room()
        waited.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(2)
        assert waited == []  # spent: the reader waits
        budget.release(100)
    assert waited == [2.0]
