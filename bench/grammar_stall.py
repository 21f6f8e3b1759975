"""A huge structured-output grammar beside a plain request: does the plain one wait?

The bundled model serves a plain streamed request (32 tokens, greedy) alone, then again while
a structured request whose schema is an ``enum`` of 20,000 strings (a 369 KB body) is being
compiled and decoded beside it. Before grammars moved out of the decode loop, the enum
request took 133 s and the plain request sent a second later waited just as long. Printed:
the enum request's time (first, then cached), and the plain request's time to first token
and total time alone and beside it, with their ratio (1.0: no stall at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.harness import bench_env, free_port, server_process

ENUM = [f"value-{n:05d}-" + "x" * 8 for n in range(20_000)]
PLAIN = {
    "model": "gemma-3-270m",
    "messages": [{"role": "user", "content": "Write a short story about the sea."}],
    "max_tokens": 32,
    "temperature": 0,
    "stream": True,
    # No end of turn, no newline: every plain request runs its 32 tokens.
    "logit_bias": {"1": -100, "106": -100, "107": -100, "108": -100},
}


async def _plain(client: httpx.AsyncClient, base: str) -> tuple[float, float]:
    """Time to first token and total time of one plain streamed request, in ms."""
    started = time.perf_counter()
    first = 0.0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=PLAIN) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if not first and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - started
    return first * 1000, (time.perf_counter() - started) * 1000


async def _enum(client: httpx.AsyncClient, base: str, tag: str) -> float:
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": f"Pick one value ({tag})."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": {"enum": ENUM}},
        },
        "max_tokens": 2,
    }
    started = time.perf_counter()
    answer = await client.post(f"{base}/v1/chat/completions", json=body)
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def _measure(base: str, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {}

    def keep(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    async with httpx.AsyncClient(timeout=600) as client:
        await _plain(client, base)  # warm-up
        for number in range(rounds):
            ttft, total = await _plain(client, base)
            keep("alone_ttft", ttft)
            keep("alone_total", total)
            # A fresh enum each round (a different name in the schema defeats the cache)...
            ENUM[0] = f"round-{number}"
            enum_task = asyncio.create_task(_enum(client, base, f"round {number}"))
            await asyncio.sleep(0.05)  # ... sent just before the plain request
            ttft, total = await _plain(client, base)
            keep("beside_ttft", ttft)
            keep("beside_total", total)
            keep("enum_first", await enum_task)
            keep("enum_cached", await _enum(client, base, f"again {number}"))
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body_kib = len(json.dumps({"enum": ENUM})) / 1024
    port = free_port()
    env = bench_env(data_dir=str(Path("data").resolve()), log_level="WARNING")
    command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
    with server_process(command, port, env, pinned=False, wait=120) as (base, _):
        found = asyncio.run(_measure(base, args.rounds))
    print(f"enum of {len(ENUM)} strings, a {body_kib:.0f} KiB schema; median of {args.rounds}\n")
    print(f"{'measure':<44} {'ms':>10}")
    print(f"{'enum request, schema compiled':<44} {found['enum_first']:>10.1f}")
    print(f"{'enum request, schema cached':<44} {found['enum_cached']:>10.1f}")
    print(f"{'plain request alone: first token':<44} {found['alone_ttft']:>10.1f}")
    print(f"{'plain request beside the enum: first token':<44} {found['beside_ttft']:>10.1f}")
    print(f"{'plain request alone: 32 tokens':<44} {found['alone_total']:>10.1f}")
    print(f"{'plain request beside the enum: 32 tokens':<44} {found['beside_total']:>10.1f}")
    print(
        f"\nplain request beside / alone: first token "
        f"{found['beside_ttft'] / found['alone_ttft']:.2f}, "
        f"total {found['beside_total'] / found['alone_total']:.2f}"
    )


if __name__ == "__main__":
    main()
