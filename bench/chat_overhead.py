"""Non-streaming chat completions with ``echo``: our server against a bare Starlette floor.

Three servers, each one uvicorn worker pinned to core 0 while wrk drives it from core 1:

* ``floor``: ``bench.floor_app``, which reads the same request and writes the same JSON;
* ``keys off``: ours with authentication and rate limits off, the JSON access log written to a
  file (``CHATBOT_LOG_FILE``) as production writes it;
* ``keys on``: the same with a master key set, every request made with an API key, and its
  requests and tokens counted per minute in memory (limits far above what the run reaches),
  as users run it.

At each concurrency (1, 16, 64) every server gets a warm-up, then the three take turns for
``--rounds`` timed runs, and the medians are compared. Targets at concurrency 64: ``keys off``
at least 0.6 of the floor's requests/s, ``keys on`` at least 0.5, and each p99 at most 3 times
the floor's. Run it with ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.harness import (
    Result,
    bench_env,
    create_key,
    free_port,
    lua,
    security_envs,
    server,
    wrk,
)

BODY = (
    '{"model": "echo", "messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hello there, how are you doing today?"}]}'
)
#: (configuration, the least requests/s ratio to the floor at concurrency 64)
TARGETS = {"keys off": 0.6, "keys on": 0.5}
P99_TARGET = 3.0


def _median(results: list[Result], field: str) -> float:
    return float(statistics.median(getattr(result, field) for result in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="one timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per server and level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as servers:
        off, on = security_envs(scratch, bundled_model="false", log_file=f"{scratch}/api.log")
        on["CHATBOT_LOG_FILE"] = f"{scratch}/api-on.log"
        key = create_key(on, "bench")
        urls: dict[str, str] = {}
        for name, env in (("keys off", off), ("keys on", on)):
            port = free_port()
            command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
            urls[name] = servers.enter_context(server(command, port, env))
        port = free_port()
        floor_cmd = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port)]
        floor_flags = ["--log-level", "warning", "--no-access-log", "--no-server-header"]
        urls["floor"] = servers.enter_context(server([*floor_cmd, *floor_flags], port, bench_env()))

        scripts: dict[str, Path] = {}
        for name, url in urls.items():
            headers = {"Authorization": f"Bearer {key}"} if name == "keys on" else {}
            scripts[name] = Path(scratch) / f"{name.replace(' ', '-')}.lua"
            scripts[name].write_text(lua(BODY, headers))
            check = httpx.post(
                f"{url}/v1/chat/completions",
                content=BODY,
                headers={"Content-Type": "application/json", **headers},
            )
            check.raise_for_status()
            assert name != "keys on" or "x-ratelimit-limit-requests" in check.headers

        runs: dict[tuple[str, int], list[Result]] = {}
        for level in levels:
            for name in urls:
                wrk(urls[name], scripts[name], level, 2)  # warm-up
            for _ in range(args.rounds):
                for name in urls:
                    runs.setdefault((name, level), []).append(
                        wrk(urls[name], scripts[name], level, args.seconds)
                    )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        "POST /v1/chat/completions, model echo, non-streaming, 1 worker on core 0, wrk -t1 on "
        f"core 1; medians of {args.rounds} x {args.seconds}s per server and level, taking turns"
    )
    print()
    header = (
        f"{'conc':>4} {'server':<9} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'req/s / floor':>13} {'p99 / floor':>11} | errors"
    )
    print(header)
    print("-" * len(header))
    for level in levels:
        floor = runs[("floor", level)]
        for name in urls:
            results = runs[(name, level)]
            rps, p99 = _median(results, "requests_per_second"), _median(results, "p99_ms")
            print(
                f"{level:>4} {name:<9} | {rps:>7.0f} {_median(results, 'p50_ms'):>7.2f} "
                f"{p99:>7.2f} | {rps / _median(floor, 'requests_per_second'):>13.2f} "
                f"{p99 / _median(floor, 'p99_ms'):>11.2f} | {sum(r.errors for r in results)}"
            )
    top = max(levels)
    floor = runs[("floor", top)]
    print()
    for name, target in TARGETS.items():
        results = runs[(name, top)]
        ratio = _median(results, "requests_per_second") / _median(floor, "requests_per_second")
        p99 = _median(results, "p99_ms") / _median(floor, "p99_ms")
        print(
            f"{name} at c={top}: {ratio:.2f} of the floor's requests/s (target >= {target}, "
            f"{'met' if ratio >= target else 'NOT met'}); p99 {p99:.2f} x the floor's "
            f"(target <= {P99_TARGET}, {'met' if p99 <= P99_TARGET else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
