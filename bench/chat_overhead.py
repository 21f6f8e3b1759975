"""Non-streaming chat completions with ``echo``: our server against a bare Starlette floor.

Both run under the same uvicorn settings (one worker), pinned to one core, while wrk drives
them from the other; each concurrency level gets a warm-up, then a timed run. Prints
requests/s and p50/p99 latency for both and the ratios. Run it with ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from bench.harness import Result, bench_env, free_port, lua, server, wrk

BODY = (
    '{"model": "echo", "messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hello there, how are you doing today?"}]}'
)


def _measure(url: str, script: Path, levels: list[int], seconds: int) -> dict[int, Result]:
    results = {}
    for connections in levels:
        wrk(url, script, connections, 2)  # warm-up
        results[connections] = wrk(url, script, connections, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="timed run per level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    env = bench_env()
    uvicorn_flags = ["--log-level", "warning", "--no-access-log", "--no-server-header"]
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "post.lua"
        script.write_text(lua(BODY))
        port = free_port()
        ours_cmd = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
        with server(ours_cmd, port, env) as url:
            ours = _measure(url, script, levels, args.seconds)
        port = free_port()
        floor_cmd = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port)]
        with server([*floor_cmd, *uvicorn_flags], port, env) as url:
            floor = _measure(url, script, levels, args.seconds)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        "POST /v1/chat/completions, model echo, non-streaming, 1 worker; wrk -t1, "
        f"{args.seconds}s per level\n"
    )
    header = (
        f"{'conc':>4} | {'ours req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'floor req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'req/s ratio':>11} "
        f"{'p50 ratio':>9} | errors"
    )
    print(header)
    print("-" * len(header))
    for level in levels:
        o, f = ours[level], floor[level]
        print(
            f"{level:>4} | {o.requests_per_second:>10.0f} {o.p50_ms:>7.2f} {o.p99_ms:>7.2f} | "
            f"{f.requests_per_second:>11.0f} {f.p50_ms:>7.2f} {f.p99_ms:>7.2f} | "
            f"{o.requests_per_second / f.requests_per_second:>11.2f} "
            f"{o.p50_ms / f.p50_ms:>9.2f} | {o.errors}/{f.errors}"
        )


if __name__ == "__main__":
    main()
