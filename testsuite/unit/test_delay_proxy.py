"""harness/delay_proxy.py: bytes arrive whole, in order, and no sooner than the delay."""
import asyncio
import time

from harness.delay_proxy import Route, parse_delay


def test_the_proxy_delays_each_direction_and_keeps_the_order():
    async def scenario():
        async def echo(reader, writer):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        route = Route(0, "127.0.0.1", target.sockets[0].getsockname()[1], (0.05, 0.1))
        proxy = await route.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
        sent = time.monotonic()
        for i in range(20):
            writer.write(b"%03d," % i)
        await writer.drain()
        got = b""
        while len(got) < 80:
            got += await reader.read(1024)
        elapsed = time.monotonic() - sent
        writer.close()
        proxy.close()
        target.close()
        return got, elapsed

    got, elapsed = asyncio.run(scenario())
    assert got == b"".join(b"%03d," % i for i in range(20))
    assert elapsed >= 0.1       # at least the minimum delay, there and back


def test_delay_is_checked():
    assert parse_delay("0.1:0.3") == (0.1, 0.3)
    for bad in ("0.3:0.1", "x", "-1:2"):
        try:
            parse_delay(bad)
        except SystemExit as exc:
            assert "delay" in str(exc)
        else:
            raise AssertionError(bad)
