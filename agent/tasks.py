"""The task queue: every command the agent executes runs through it.

It limits concurrency to ``workers``, runs IN_SEQUENCE requests one after another in
arrival order, counts what is in flight and lets others wait until nothing is. It lives
as long as the agent, not a session, so a command outlives a dropped connection.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
import trio

log = structlog.get_logger("agent.tasks")

Job = Callable[[], Awaitable[None]]


class QueueClosed(Exception):
    """The agent is shutting down and takes no new commands."""


class QueueFull(Exception):
    """Too many commands are waiting already."""


class TaskQueue:
    def __init__(self, nursery: trio.Nursery, workers: int, max_pending: int = 1000) -> None:
        self._nursery = nursery
        self._limiter = trio.CapacityLimiter(workers)
        self._max_pending = max_pending
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        self._lane_send, self._lane_recv = trio.open_memory_channel[Job](math.inf)
        nursery.start_soon(self._sequential_lane)

    @classmethod
    @asynccontextmanager
    async def open(cls, workers: int, max_pending: int = 1000) -> AsyncIterator[TaskQueue]:
        async with trio.open_nursery() as nursery:
            queue = cls(nursery, workers, max_pending)
            try:
                yield queue
            finally:
                nursery.cancel_scope.cancel()

    @property
    def in_flight(self) -> int:
        """Commands accepted and not finished (waiting for a worker or running)."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def workers(self) -> int:
        return int(self._limiter.total_tokens)

    def set_workers(self, workers: int) -> None:
        self._limiter.total_tokens = workers

    def submit(self, job: Job, *, in_sequence: bool = False) -> None:
        """Accept a job without waiting; QueueClosed or QueueFull when it cannot."""
        if self._closed:
            raise QueueClosed("the agent is shutting down")
        if self._in_flight >= self._max_pending:
            raise QueueFull(f"{self._in_flight} commands are already waiting")
        self._in_flight += 1
        self._idle = trio.Event() if self._in_flight == 1 else self._idle
        if in_sequence:
            self._lane_send.send_nowait(job)
        else:
            self._nursery.start_soon(self._run, job)

    def close(self) -> None:
        """Take no new jobs; those accepted still run."""
        self._closed = True

    async def wait_idle(self) -> None:
        """Return once nothing is in flight (at once if nothing is)."""
        while self._in_flight:
            await self._idle.wait()

    async def _sequential_lane(self) -> None:
        async for job in self._lane_recv:
            await self._run(job)

    async def _run(self, job: Job) -> None:
        try:
            async with self._limiter:
                await job()
        except Exception:
            log.exception("command task failed")  # jobs answer their own errors; a bug
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
