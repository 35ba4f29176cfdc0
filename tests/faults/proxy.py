"""A TCP proxy for network faults: nodes connect to it on 127.0.0.1, it forwards to PostgreSQL.

``pause()`` is a black hole: connections stay open (and new ones are accepted) but no byte moves in
either direction until ``resume()``, so a client sees neither an error nor a reply, exactly as
behind a hung pooler or a partition that drops packets. ``delay(seconds)`` adds latency to every
chunk. ``reset()`` closes every open connection abruptly (RST), as a restarted load balancer does.

The upstream is a Unix socket (the embedded server listens on one only) or a TCP ``host:port``.
The proxy runs its own asyncio loop on a daemon thread; every method is safe to call from tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

_CHUNK = 65536


class Proxy:
    def __init__(self, *, unix_path: str | None = None, host: str = "", port: int = 0) -> None:
        if (unix_path is None) == (not host):
            raise ValueError("give either unix_path or host and port")
        self.unix_path = unix_path
        self.upstream_host = host
        self.upstream_port = port
        self.port = 0
        self.connections_opened = 0
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._thread.start()
        self._call(self._start())

    # ---------------------------------------------------------------- control (any thread)
    def pause(self) -> None:
        """Black hole: stop moving bytes, keep every connection open."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk in both directions (0 to stop)."""
        self._delay = seconds

    def reset(self) -> int:
        """Close every open connection with a RST; returns how many were closed."""
        return int(self._call(self._reset()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    def url(self, driver: str = "psycopg", database: str = "postgres") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    # ---------------------------------------------------------------- the loop's side
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset(self) -> int:
        writers = list(self._writers)
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                # SO_LINGER 0: close() sends a RST instead of a FIN.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()
        return len(writers) // 2

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_opened += 1
        self._writers.add(writer)
        # A connection opened during a pause is accepted (the client's connect succeeds) but goes
        # nowhere until resume: the handshake itself falls into the black hole.
        await self._flowing.wait()
        try:
            if self.unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, writer),
            self._pump(up_reader, writer, up_writer),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self._delay:
                    await asyncio.sleep(self._delay)
                # Held here while paused: what was read is delivered after resume, not dropped.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._writers.discard(other)
            writer.transport.abort()
            other.transport.abort()
