"""What one upstream call costs the HTTP client: sequential keep-alive POSTs of a chat body to a
bare Starlette upstream (``bench.floor_app``, started here on core 0), timed per request, with
``httpx2`` (our gateway's client, the openai SDK's transport) and, where installed, ``aiohttp``
(LiteLLM's). Run it with each interpreter that has one of them, e.g.
``.venv/bin/python -m bench.http_client_cost`` and
``.bench/litellm/bin/python -m bench.http_client_cost`` (from the repository's root)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from bench.harness import free_port, pin

BODY = json.dumps(
    {
        "model": "echo",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there, how are you doing today?"},
        ],
    }
).encode()
REQUESTS = 2000


async def _httpx2(url: str) -> float | None:
    try:
        import httpx2
    except ImportError:
        return None
    async with httpx2.AsyncClient() as client:
        for _ in range(200):  # warm-up
            await client.post(url, content=BODY)
        started = time.perf_counter()
        for _ in range(REQUESTS):
            response = await client.send(client.build_request("POST", url, content=BODY))
            await response.aread()
        return (time.perf_counter() - started) / REQUESTS


async def _aiohttp(url: str) -> float | None:
    try:
        import aiohttp  # LiteLLM's client (ours has it through livekit-api)
    except ImportError:
        return None
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.post(url, data=BODY) as response:
                await response.read()
        started = time.perf_counter()
        for _ in range(REQUESTS):
            async with session.post(url, data=BODY) as response:
                await response.read()
        return (time.perf_counter() - started) / REQUESTS


def main() -> None:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    upstream = subprocess.Popen([*pin(0), *command])
    try:
        time.sleep(3)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for name, run in (("httpx2", _httpx2), ("aiohttp", _aiohttp)):
            seconds = asyncio.run(run(url))
            if seconds is not None:
                print(f"{name}: {seconds * 1000:.2f} ms a request, the upstream's time included")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
