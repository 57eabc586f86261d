"""``kyojo web serve``'s listening sockets let asyncio turn Nagle off on each connection.

With ``proto = 0`` asyncio leaves Nagle on (it sets TCP_NODELAY only when ``sock.proto == IPPROTO_TCP``): uvicorn
writes a response's headers and body separately, and every small page then waited ~40 ms for the client's
delayed ACK (bench/web.py: p50 45-55 ms before, 2-20 ms after).
"""

from __future__ import annotations

import asyncio
import socket

from edge_agent.web.cli import bind


def test_accepted_connections_have_nagle_off() -> None:
    (listener,) = bind(["127.0.0.1"], 0)
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            w.close()

    try:
        asyncio.run(main())
    finally:
        listener.close()
    assert listener.proto == socket.IPPROTO_TCP
    assert seen == [1]
