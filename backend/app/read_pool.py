"""A few asyncpg connections for single read statements outside any transaction (`database.fetch_row`).

Not asyncpg's `Pool`: its checkout and return (a proxy object, a reset, an inactivity timer and a
shielded task per use) cost the API more CPU than the read itself. Here a checkout is a slot (a
bounded wait, `Gate`) and a connection popped from a list, opened on demand up to `size`. A
connection comes back only after a clean use; after anything else (a lost server, a cancelled read)
it is closed and never handed out again.
"""

import asyncpg

from app.utils.gate import Gate


class ReadPool:
    def __init__(self, dsn: str, *, size: int, timeout: float, server_settings: dict[str, str]) -> None:
        self._dsn = dsn
        self._server_settings = server_settings
        self._slots = Gate(size, timeout=timeout, what="a database connection")  # ServerBusy past `timeout`
        self._idle: list[asyncpg.Connection] = []  # open, not handed out; at most `size` in all
        self._closed = False

    async def acquire(self) -> asyncpg.Connection:
        await self._slots.acquire()
        try:
            while self._idle:
                connection = self._idle.pop()  # the most recently used: the likeliest to be alive
                if not connection.is_closed():
                    return connection
            return await asyncpg.connect(self._dsn, timeout=5, server_settings=self._server_settings)
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: asyncpg.Connection, *, reusable: bool) -> None:
        if reusable and not self._closed and not connection.is_closed():
            self._idle.append(connection)
        else:
            connection.terminate()
        self._slots.release()

    def expire(self) -> None:
        """Close the idle connections (they predate a lost server): the next reads open new ones."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.terminate()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await connection.close(timeout=2)
            except Exception:  # the server is gone or slow: drop the connection without its goodbye
                connection.terminate()
