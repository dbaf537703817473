"""The task queue: every command the agent executes runs through it.

It limits concurrency to ``workers``, runs IN_SEQUENCE requests one after another in
arrival order, counts what is in flight and lets others wait until nothing is. It lives
as long as the agent, not a session, so a command outlives a dropped connection.

What waits is bounded in bytes, not in number (:class:`~agent.link.budget.ByteBudget`): a job
waiting for a worker is a closure in a deque, not a task, so a burst of twenty thousand
cheap commands costs little and is served in full.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
import trio

from agent.link.budget import ByteBudget

log = structlog.get_logger("agent.tasks")

Job = Callable[[], Awaitable[None]]


class QueueClosed(Exception):
    """The agent is shutting down and takes no new commands."""


class TaskQueue:
    def __init__(self, nursery: trio.Nursery, workers: int, max_bytes: int) -> None:
        self._nursery = nursery
        self._limiter = trio.CapacityLimiter(workers)
        self.budget = ByteBudget(max_bytes)
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        self._waiting: collections.deque[tuple[Job, int]] = collections.deque()
        self._more = trio.Event()
        self._lane_send, self._lane_recv = trio.open_memory_channel[tuple[Job, int]](math.inf)
        nursery.start_soon(self._dispatcher)
        nursery.start_soon(self._sequential_lane)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, workers: int, max_bytes: int = 64 * 1024 * 1024
    ) -> AsyncIterator[TaskQueue]:
        async with trio.open_nursery() as nursery:
            queue = cls(nursery, workers, max_bytes)
            try:
                yield queue
            finally:
                nursery.cancel_scope.cancel()

    @property
    def in_flight(self) -> int:
        """Commands accepted and not finished (waiting for a worker or running)."""
        return self._in_flight

    def set_workers(self, workers: int) -> None:
        """SIGHUP's ``workers``: more run at once from now on, or fewer as they finish."""
        self._limiter.total_tokens = workers

    def submit(self, job: Job, *, size: int = 0, in_sequence: bool = False) -> None:
        """Accept a job without waiting (QueueClosed when stopping). ``size`` bytes are
        charged to the budget until the job ends."""
        if self._closed:
            raise QueueClosed("the agent is shutting down")
        self._in_flight += 1
        self._idle = trio.Event() if self._in_flight == 1 else self._idle
        self.budget.charge(size)
        if in_sequence:
            self._lane_send.send_nowait((job, size))
        else:
            self._waiting.append((job, size))
            self._more.set()

    def close(self) -> None:
        """Take no new jobs; those accepted still run."""
        self._closed = True

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (at once if nothing is)."""
        while self._in_flight:
            await self._idle.wait()

    async def _dispatcher(self) -> None:
        while True:
            while not self._waiting:
                await self._more.wait()
                self._more = trio.Event()
            job, size = self._waiting.popleft()
            token = object()
            await self._limiter.acquire_on_behalf_of(token)
            self._nursery.start_soon(self._run_holding, job, size, token)

    async def _sequential_lane(self) -> None:
        async for job, size in self._lane_recv:
            token = object()
            await self._limiter.acquire_on_behalf_of(token)
            await self._run_holding(job, size, token)

    async def _run_holding(self, job: Job, size: int, token: object) -> None:
        try:
            await job()
        except Exception:
            log.exception("command task failed")  # jobs answer their own errors; a bug
        finally:
            self._limiter.release_on_behalf_of(token)
            self.budget.release(size)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
