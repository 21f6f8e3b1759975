"""Multi-turn conversations: time to first token per turn, with prefix reuse on and off, and
against llama.cpp's own ``llama-server``.

8 conversations of 6 turns each run at once against the bundled model (8 slots, the same
threads everywhere), as 8 people chatting would: each turn sends the whole conversation so
far (a system prompt, every earlier question and answer, and a new question) and streams a
reply of ``--tokens`` tokens. Three servers in turn: ours with ``cache_prompt`` on (the
default), ours with it off, and llama-server (whose ``cache_prompt`` is on by default). Prints
the median time to first token of each turn over the 8 conversations, and the prompt tokens
ours reported as cached.

Target: from the third turn on, ours with reuse takes at most 0.3 of the time to first token
of ours without.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import free_port, llama_server
from bench.local_inference import FRESH_CONNECTIONS, serve_and_measure, sse_data
from chatbot_api.providers.llama.bundled import prepare_bundled_model

SYSTEM = (
    "You are a knowledgeable and patient guide to the history of science. Answer each question "
    "in a few plain sentences, and build on what was said earlier in the conversation."
)
QUESTIONS = [
    "Who was Galileo Galilei, and why is he remembered?",
    "What did he see through his telescope?",
    "Why did the church object to his ideas?",
    "How did Newton build on his work?",
    "What changed in astronomy after Newton?",
    "Which of these discoveries matters most today, and why?",
]
CONVERSATIONS = 8
TARGET = 0.3


async def _turn(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], tokens: int
) -> tuple[float, str, int | None]:
    """Time to first token, the reply, and the cached prompt tokens reported (if any)."""
    body = {
        "model": "bench",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
        "temperature": 0.7,
        "seed": 1,
    }
    started = time.perf_counter()
    first = 0.0
    reply: list[str] = []
    cached = None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for chunk in sse_data(response):
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                reply.append(chunk["choices"][0]["delta"]["content"])
                first = first or time.perf_counter() - started
            usage = chunk.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            if "cached_tokens" in details:
                cached = details["cached_tokens"]
    return first or time.perf_counter() - started, "".join(reply), cached


async def _conversation(
    client: httpx.AsyncClient, url: str, number: int, tokens: int
) -> list[tuple[float, int | None]]:
    messages = [{"role": "system", "content": f"Conversation {number}. {SYSTEM}"}]
    turns = []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        first, reply, cached = await _turn(client, url, messages, tokens)
        messages.append({"role": "assistant", "content": reply})
        turns.append((first, cached))
    return turns


async def _measure(base: str, tokens: int) -> list[list[tuple[float, int | None]]]:
    url = f"{base}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600, limits=FRESH_CONNECTIONS) as client:
        await _turn(client, url, [{"role": "user", "content": "Hello"}], 4)  # warm-up
        return list(
            await asyncio.gather(
                *(_conversation(client, url, n, tokens) for n in range(CONVERSATIONS))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per reply")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    gguf = prepare_bundled_model(Path("data"), show_progress=True).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    results: dict[str, list[list[tuple[float, int | None]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, reuse in (("ours, reuse", "true"), ("ours, no reuse", "false")):
            models = Path(scratch) / f"{reuse}.toml"
            models.write_text(
                f'[models.bench]\nprovider = "llama_cpp"\npath = "{gguf}"\n'
                f"threads = {args.threads}\nparallel = {CONVERSATIONS}\ncontext_size = 2048\n"
                f"cache_prompt = {reuse}\n"
            )
            port = free_port()
            command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
            server_env = {
                **env,
                "CHATBOT_MODELS_FILE": str(models),
                "CHATBOT_BUNDLED_MODEL": "false",
                "CHATBOT_LOG_LEVEL": "WARNING",
                "CHATBOT_RATE_LIMIT_RPM": "0",
                "CHATBOT_RATE_LIMIT_TPM": "0",
            }
            results[name] = asyncio.run(
                serve_and_measure(command, port, server_env, _measure, args.tokens)
            )
    port = free_port()
    command, server_env = llama_server(
        gguf, port, threads=args.threads, parallel=CONVERSATIONS, context_per_slot=2048
    )
    results["llama-server"] = asyncio.run(
        serve_and_measure(command, port, server_env, _measure, args.tokens)
    )
    _report(results, args.tokens, args.threads, gguf)


def _report(
    results: dict[str, list[list[tuple[float, int | None]]]], tokens: int, threads: int, gguf: Path
) -> None:
    print(
        f"model: {gguf.name}; {threads} threads; {CONVERSATIONS} conversations at once, "
        f"{len(QUESTIONS)} turns each, {tokens}-token replies; median time to first token (ms)\n"
    )
    names = list(results)
    print(f"{'turn':>4} " + " ".join(f"{name:>15}" for name in names) + "   reuse/no  cached")
    medians: dict[str, list[float]] = {}
    for name in names:
        medians[name] = [
            statistics.median(conversation[turn][0] for conversation in results[name]) * 1000
            for turn in range(len(QUESTIONS))
        ]
    for turn in range(len(QUESTIONS)):
        cached = statistics.median(
            conversation[turn][1] or 0 for conversation in results["ours, reuse"]
        )
        ratio = medians["ours, reuse"][turn] / medians["ours, no reuse"][turn]
        row = " ".join(f"{medians[name][turn]:>15.0f}" for name in names)
        print(f"{turn + 1:>4} {row}   {ratio:>8.2f}  {cached:>6.0f}")
    later = [
        medians["ours, reuse"][turn] / medians["ours, no reuse"][turn]
        for turn in range(2, len(QUESTIONS))
    ]
    print(
        f"\nfrom turn 3 on, ours with reuse / without: worst {max(later):.2f} "
        f"(target <= {TARGET}, {'met' if max(later) <= TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
