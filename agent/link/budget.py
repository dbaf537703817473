"""The byte budget: how much the agent holds for commands it has read but not yet answered.

Charged by the reader for every request it decodes (its decoded size plus a fixed
overhead for the objects around it) and by the writer for every answer waiting to be
sent; released once the answer is on the wire. While the budget is spent the reader
stops reading the socket, so a flood fills TCP buffers (the MS's problem), not our memory.
"""

from __future__ import annotations

import trio

REQUEST_OVERHEAD = 1024  # bytes charged on top of a request's size: its objects and its job


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._room = trio.Event()
        self._room.set()

    @property
    def spent(self) -> bool:
        return self.used >= self.limit

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._update()

    def charge(self, size: int) -> None:
        """Take ``size`` bytes, even past the limit: what is charged is already in memory."""
        self.used += size
        self.peak = max(self.peak, self.used)
        self._update()

    def release(self, size: int) -> None:
        self.used -= size
        self._update()

    async def wait_for_room(self) -> None:
        """Return once the budget is not spent (at once if it is not)."""
        while self.spent:
            await self._room.wait()

    def _update(self) -> None:
        if self.spent:
            if self._room.is_set():
                self._room = trio.Event()
        else:
            self._room.set()
