"""The price of ``store: true``: the same echo requests with and without storing, for chat
completions (queued for the background writer) and for the Responses API (written in the
request, before the answer, so that a continuation on any worker sees it).

One server (SQLite in a scratch directory, one worker, pinned to core 0) and wrk on core 1
at concurrency 64; after a warm-up the two bodies alternate for several rounds, and the
medians are compared (run-to-run noise on this machine is several percent, so one pair of
runs says little). Target: p50 latency and throughput within 10% of ``store: false``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.harness import Result, bench_env, free_port, lua, server, wrk

APIS = {
    "chat": (
        "/v1/chat/completions",
        '{"model": "echo", "store": %s, "metadata": {"bench": "store"}, "messages": '
        '[{"role": "system", "content": "You are terse."}, '
        '{"role": "user", "content": "Hello there, how are you doing today?"}]}',
    ),
    "responses": (
        "/v1/responses",
        '{"model": "echo", "store": %s, "metadata": {"bench": "store"}, '
        '"instructions": "You are terse.", "input": "Hello there, how are you doing today?"}',
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--api", choices=[*APIS, "both"], default="both")
    args = parser.parse_args()
    for api in APIS if args.api == "both" else [args.api]:
        measure(api, args)


def measure(api: str, args: argparse.Namespace) -> None:
    path, body = APIS[api]

    with tempfile.TemporaryDirectory() as scratch:
        env = bench_env(
            database_url=f"sqlite+aiosqlite:///{scratch}/bench.db", bundled_model="false"
        )
        scripts = {}
        for store in ("false", "true"):
            scripts[store] = Path(scratch) / f"store-{store}.lua"
            scripts[store].write_text(lua(body % store))
        port = free_port()
        command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
        runs: dict[str, list[Result]] = {"false": [], "true": []}
        with server(command, port, env) as url:
            for store in ("false", "true"):
                wrk(url, scripts[store], args.concurrency, 3, path)  # warm-up
            for _ in range(args.rounds):
                for store in ("false", "true"):
                    runs[store].append(
                        wrk(url, scripts[store], args.concurrency, args.seconds, path)
                    )

    def median(store: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs[store]))

    print(
        f"\nPOST {path}, echo, SQLite, 1 worker, concurrency {args.concurrency}, "
        f"{args.rounds} x {args.seconds}s per body, alternating (medians)\n"
    )
    print(f"{'':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for store in ("false", "true"):
        errors = sum(r.errors for r in runs[store])
        print(
            f"store: {store:<7} {median(store, 'requests_per_second'):>8.0f} "
            f"{median(store, 'p50_ms'):>8.2f} {median(store, 'p99_ms'):>8.2f} {errors:>7}"
        )
    for store in ("false", "true"):
        each = " ".join(f"{r.requests_per_second:.0f}" for r in runs[store])
        print(f"  store: {store} req/s per run: {each}")
    rps = median("true", "requests_per_second") / median("false", "requests_per_second")
    p50 = median("true", "p50_ms") / median("false", "p50_ms")
    print(
        f"\nstore:true / store:false  throughput {rps:.2f}  p50 {p50:.2f}"
        "  (target: throughput >= 0.90, p50 <= 1.10)"
    )


if __name__ == "__main__":
    main()
