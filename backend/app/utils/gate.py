"""A bounded wait for a limited resource: past the bound the caller is told "busy" at once."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import ServerBusy


class Gate:
    """At most `limit` holders; a caller waits at most `timeout` seconds, and only while fewer
    than `max_waiting` others wait (unbounded when None). Otherwise `ServerBusy`."""

    def __init__(self, limit: int, *, timeout: float, max_waiting: int | None = None, what: str = "") -> None:
        self.limit = max(1, limit)
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.what = what or "this resource"
        self._semaphore = asyncio.Semaphore(self.limit)
        self.waiting = 0

    @property
    def in_use(self) -> int:
        return self.limit - self._semaphore._value

    def ensure_room(self) -> None:
        """Refuse now, before any other work, when a caller would be turned away anyway."""
        if self._semaphore.locked() and self.max_waiting is not None and self.waiting >= self.max_waiting:
            raise ServerBusy(f"Too many requests are waiting for {self.what}; please try again")

    async def acquire(self) -> None:
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # free: returns without suspending
            return
        self.ensure_room()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            raise ServerBusy(f"Waited {self.timeout:g} s for {self.what}; please try again") from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._semaphore.release()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
