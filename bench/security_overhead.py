"""The price of API keys and rate limits: the same echo requests with security on and off.

``off``: ``CHATBOT_AUTH=disabled``, no limits, no failed-auth throttle. ``on``: a master key
set and every request made with an API key (looked up in SQLite on each request, so that a
revocation counts at once), its requests and tokens counted per minute in memory, failed
authentication throttled. ``on+redis`` (when Redis answers at ``--redis``): the same with the
counters in Redis, as several workers would share them. The key's limits are set far above
what the run can reach, so that every request is admitted and counted.

Each configuration is its own server process (one worker, pinned to core 0; wrk on core 1);
after a warm-up they take turns for several rounds and medians are compared.
Target: ``on`` costs under 10% of throughput at concurrency 64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from bench.harness import Result, create_key, free_port, lua, security_envs, server, wrk

BODY = (
    '{"model": "echo", "messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hello there, how are you doing today?"}]}'
)


def _redis_answers(url: str) -> bool:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        import socket

        with socket.create_connection((host, int(port or 6379)), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _serving(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
    with server(command, port, env) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as servers:
        off_env, on_env = security_envs(scratch, bundled_model="false", log_level="WARNING")
        key = create_key(on_env, "bench")
        configurations = {"off": off_env, "on": on_env}
        if _redis_answers(args.redis):
            configurations["on+redis"] = {**on_env, "CHATBOT_REDIS_URL": args.redis}
        urls = {name: servers.enter_context(_serving(env)) for name, env in configurations.items()}
        scripts = {}
        for name in configurations:
            scripts[name] = Path(scratch) / f"{name}.lua"
            headers = {} if name == "off" else {"Authorization": f"Bearer {key}"}
            scripts[name].write_text(lua(BODY, headers))
            check = httpx.post(
                f"{urls[name]}/v1/chat/completions",
                content=BODY,
                headers={"Content-Type": "application/json", **headers},
            )
            check.raise_for_status()
            assert name == "off" or "x-ratelimit-limit-requests" in check.headers
        runs: dict[str, list[Result]] = {name: [] for name in configurations}
        for name in configurations:
            wrk(urls[name], scripts[name], args.concurrency, 3)  # warm-up
        for _ in range(args.rounds):
            for name in configurations:
                runs[name].append(wrk(urls[name], scripts[name], args.concurrency, args.seconds))

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs[name]))

    print(
        f"POST /v1/chat/completions, echo, 1 worker, concurrency {args.concurrency}, "
        f"{args.rounds} x {args.seconds}s per configuration, taking turns (medians)\n"
    )
    print(f"{'':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   req/s per run")
    for name in configurations:
        errors = sum(r.errors for r in runs[name])
        each = " ".join(f"{r.requests_per_second:.0f}" for r in runs[name])
        print(
            f"{name:<10} {median(name, 'requests_per_second'):>8.0f} "
            f"{median(name, 'p50_ms'):>8.2f} {median(name, 'p99_ms'):>8.2f} {errors:>7}   {each}"
        )
    base = median("off", "requests_per_second")
    print()
    for name in configurations:
        if name != "off":
            ratio = median(name, "requests_per_second") / base
            print(
                f"{name} / off  throughput {ratio:.2f}  (cost {1 - ratio:.1%}; target: under 10%)"
            )


if __name__ == "__main__":
    main()
