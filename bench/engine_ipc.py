"""What the engine's IPC costs a token: our Unix socket with msgspec frames, against the
standard library's ``multiprocessing.connection`` (pickled messages over a socket pair).

A child process plays the engine and sends ``--tokens`` text events, one per decoded token
(``protocol.Text``, as the real engine sends them), as fast as it can; this process reads and
decodes each, as an API worker does. Printed: events per second and microseconds per event
for both, and what that is beside the time one decode step of the bundled model takes on this
machine (about 15 ms a token): the share of a token's time spent crossing the boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from chatbot_api.providers.llama.protocol import EngineMessage, Text, encode, read_frame

#: Milliseconds one decode step of the bundled model takes here (docs/benchmarks.md).
DECODE_STEP_MS = 15.0


def _socket_engine(path: str, tokens: int) -> None:
    async def send() -> None:
        _, writer = await asyncio.open_unix_connection(path)
        for n in range(tokens):
            writer.write(encode(Text(1, f" word{n}")))
            if n % 64 == 0:
                await writer.drain()
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    asyncio.run(send())


def _pipe_engine(connection: multiprocessing.connection.Connection, tokens: int) -> None:
    for n in range(tokens):
        connection.send({"type": "text", "id": 1, "text": f" word{n}", "logprobs": None})
    connection.close()


async def _read_socket(tokens: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "ipc.sock")
        received = 0
        done = asyncio.Event()
        decoder = msgspec.msgpack.Decoder(EngineMessage)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            while (frame := await read_frame(reader)) is not None:
                message = decoder.decode(frame)
                assert isinstance(message, Text)
                received += 1
            writer.close()
            done.set()

        server = await asyncio.start_unix_server(serve, path=path)
        child = multiprocessing.get_context("spawn").Process(
            target=_socket_engine, args=(path, tokens)
        )
        started = time.perf_counter()
        child.start()
        await done.wait()
        took = time.perf_counter() - started
        child.join()
        server.close()
        assert received == tokens
        return took


def _read_pipe(tokens: int) -> float:
    reader, writer = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(target=_pipe_engine, args=(writer, tokens))
    started = time.perf_counter()
    child.start()
    writer.close()
    received = 0
    try:
        while True:
            message = reader.recv()
            assert message["type"] == "text"
            received += 1
    except EOFError:
        pass
    took = time.perf_counter() - started
    child.join()
    assert received == tokens
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=200_000)
    args = parser.parse_args()
    # Both include starting the child (the same for both); enough events make it small.
    ours = asyncio.run(_read_socket(args.tokens))
    theirs = _read_pipe(args.tokens)
    print(f"{args.tokens} text events from a child process; {os.cpu_count()} cores\n")
    print(f"{'transport':<44} {'events/s':>10} {'us/event':>9} {'of a token':>11}")
    for name, took in (
        ("Unix socket + msgspec frames (ours)", ours),
        ("multiprocessing.connection + pickle", theirs),
    ):
        per_event_us = took / args.tokens * 1e6
        share = per_event_us / (DECODE_STEP_MS * 1000)
        print(f"{name:<44} {args.tokens / took:>10,.0f} {per_event_us:>9.1f} {share:>10.2%}")
    print(f"\nours / multiprocessing.connection, events per second: {theirs / ours:.2f}")


if __name__ == "__main__":
    if sys.platform != "linux":
        sys.exit("Unix sockets and the spawn start method are measured on Linux")
    main()
