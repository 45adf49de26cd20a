"""A TCP forwarder in the root namespace: for each host link, listen on its host-side
address at PostgreSQL's, Redis's and PgBouncer's ports and pass the bytes to 127.0.0.1.

Why it is faithful: it copies bytes both ways unchanged and mirrors each side's close on
the other (a server restart closes the hosts' connections; a host killed closes its
server sessions). It never retries, buffers beyond the socket's, or times anything out, so
a partition (packets dropped inside the host's namespace, between the host and this
forwarder) leaves the host's connection silent while the server's session stays open, as
over a real network. The one difference: the server sees its clients at 127.0.0.1.

It also adds the "delay" fault: ``<control>`` (JSON ``{gateway: [delay_ms, jitter_ms]}``,
re-read when it changes) delays each chunk a host sends by that much, in order, as
``netem`` on the host's end of the link would (this kernel has no ``netem``).

Usage: ``python -m tests.chaos.forward <control> 10.77.0.1 10.77.1.1 ...`` (runs until
killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from pathlib import Path

#: PostgreSQL, Redis, and PgBouncer (``scripts/chaos --pgbouncer``; unused otherwise).
PORTS = (5432, 6379, 6432)


DELAYS: dict[str, list[int]] = {}


async def _watch(control: Path) -> None:
    seen = None
    while True:
        try:
            stamp = control.stat().st_mtime_ns
            if stamp != seen:
                DELAYS.clear()
                DELAYS.update(json.loads(control.read_text()))
                seen = stamp
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.1)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gateway: str | None = None
) -> None:
    try:
        while data := await reader.read(65536):
            if gateway is not None and DELAYS.get(gateway, [0, 0])[0]:
                delay, jitter = DELAYS[gateway]
                await asyncio.sleep(max(0.0, delay + random.uniform(-jitter, jitter)) / 1000)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _handler(address: str, port: int):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, address), _pipe(up_reader, writer))

    return handle


async def main(control: Path, addresses: list[str]) -> None:
    watcher = asyncio.create_task(_watch(control))
    servers = [
        await asyncio.start_server(_handler(address, port), address, port, reuse_address=True)
        for address in addresses
        for port in PORTS
    ]
    print("forwarding", " ".join(addresses), flush=True)
    await asyncio.gather(watcher, *(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
