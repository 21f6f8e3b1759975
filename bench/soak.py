"""A soak: minutes of mixed streaming and non-streaming traffic on two workers.

``chatbot-api serve --workers 2`` on SQLite with a master key, an API key and rate limits on
(set high enough to admit everything), half the requests streamed and a quarter stored, from
32 concurrent clients using the official openai SDK. Prints throughput, errors (target:
none) and each worker's resident memory after the warm-up and at the end (target: flat).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

import openai

from bench.harness import bench_env, create_key, free_port, server_process

MASTER = "sk-bench-master-key-0123456789"


def _workers(pid: int) -> list[int]:
    """The serving children of uvicorn's supervisor (not multiprocessing's resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    return found


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _client(
    client: openai.AsyncOpenAI, deadline: float, counts: dict[str, int], number: int
) -> None:
    for turn in itertools.count(number):
        if time.monotonic() >= deadline:
            return
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "user", "content": f"soak request {turn} " + "word " * (turn % 40)}
        ]
        try:
            if turn % 2:
                stream = await client.chat.completions.create(
                    model="echo", messages=messages, stream=True, store=turn % 4 == 1
                )
                async for _ in stream:
                    pass
            else:
                await client.chat.completions.create(
                    model="echo", messages=messages, store=turn % 4 == 0
                )
            counts["ok"] += 1
        except openai.OpenAIError:
            counts["errors"] += 1


async def _drive(url: str, key: str, seconds: float, concurrency: int) -> dict[str, int]:
    counts = {"ok": 0, "errors": 0}
    deadline = time.monotonic() + seconds
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        await asyncio.gather(*(_client(client, deadline, counts, n) for n in range(concurrency)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        env = bench_env(
            bundled_model="false",
            log_level="WARNING",
            master_key=MASTER,
            database_url=f"sqlite+aiosqlite:///{scratch}/soak.db",
            rate_limit_rpm="1000000000",
            rate_limit_tpm="1000000000",
        )
        key = create_key(env, "soak")
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "chatbot_api",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        with server_process(command, port, env, pinned=False) as (url, process):
            asyncio.run(_drive(url, key, 15, args.concurrency))  # warm-up
            workers = _workers(process.pid)
            before = {pid: _rss_mib(pid) for pid in workers}
            started = time.monotonic()
            counts = asyncio.run(_drive(url, key, args.minutes * 60, args.concurrency))
            elapsed = time.monotonic() - started
            after = {pid: _rss_mib(pid) for pid in workers}

    print(
        f"soak: {args.minutes:g} min, 2 workers, {args.concurrency} clients, echo, half "
        "streamed, a quarter stored, keys and limits on\n"
    )
    print(f"requests: {counts['ok']:,} ok, {counts['errors']} errors (target: 0)")
    print(f"throughput: {counts['ok'] / elapsed:,.0f} req/s")
    for pid in workers:
        growth = after[pid] - before[pid]
        print(
            f"worker {pid}: RSS {before[pid]:.1f} MiB after warm-up, {after[pid]:.1f} MiB "
            f"at the end ({growth:+.1f} MiB)"
        )


if __name__ == "__main__":
    main()
