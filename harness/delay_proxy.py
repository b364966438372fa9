#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a random 100-300 ms, in user space.

    python -m harness.delay_proxy --route 12841:127.0.0.1:12800 [--route ...] [--delay 0.1:0.3]

This machine's kernel has no sch_netem (`tc qdisc ... netem` fails), so
network delay for the benchmarks is made here: each chunk read on one side is
written to the other once its delay has passed. A chunk never overtakes the
one before it (the stream stays a stream): its delivery time is the later of
its own draw and the previous chunk's. Each direction of each connection is
delayed on its own, like a link with jitter and no loss.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time

CHUNK = 65536


class Route:
    """Listen on one port, forward every connection to (host, port), delayed."""

    def __init__(self, listen_port: int, host: str, port: int, delay: tuple[float, float],
                 listen_host: str = "127.0.0.1") -> None:
        self.listen = (listen_host, listen_port)
        self.target = (host, port)
        self.delay = delay
        self.connections = 0

    async def start(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._serve, *self.listen)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks, hand them to a writer task that sends each at its time."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        last = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                last = max(last, time.monotonic() + random.uniform(*self.delay))
                await queue.put((last, data))
                if not data:
                    break
        except OSError:
            await queue.put((last, b""))
        await sender

    @staticmethod
    async def _send(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                at, data = await queue.get()
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def parse_route(text: str, delay: tuple[float, float]) -> Route:
    try:
        listen, host, port = text.split(":")
        return Route(int(listen), host, int(port), delay)
    except ValueError:
        raise SystemExit(f"delay_proxy: --route must be LISTEN_PORT:HOST:PORT, got {text!r}") from None


def parse_delay(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError:
        raise SystemExit(f"delay_proxy: --delay must be MIN:MAX seconds, got {text!r}") from None
    if not 0 <= low <= high:
        raise SystemExit("delay_proxy: --delay needs 0 <= MIN <= MAX")
    return low, high


async def serve(routes: list[Route]) -> None:
    servers = [await route.start() for route in routes]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("delay_proxy: " + ", ".join(f"{r.listen[1]} -> {r.target[0]}:{r.target[1]}" for r in routes)
          + f" (delay {routes[0].delay[0]:.3f}-{routes[0].delay[1]:.3f} s)", file=sys.stderr, flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    print("delay_proxy: connections " + ", ".join(f"{r.listen[1]}: {r.connections}" for r in routes),
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", action="append", required=True, help="LISTEN_PORT:HOST:PORT")
    parser.add_argument("--delay", default="0.1:0.3", help="MIN:MAX seconds per direction (default 0.1:0.3)")
    args = parser.parse_args(argv)
    delay = parse_delay(args.delay)
    asyncio.run(serve([parse_route(r, delay) for r in args.route]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
